"""CLAP: a tiny random ClapModel saved in the published Hugging Face layout, loaded back through the loader."""

import json

import numpy as np
import pytest
import torch

from tests.eval.synthetic import FPS, SAMPLE_RATE, click_wave, flash_frames
from uniform_cli.eval.clap import SAMPLE_RATE as CLAP_RATE
from uniform_cli.eval.clap import audio_embedding, load_clap, resample, text_embedding
from uniform_cli.eval.run import evaluate
from uniform_cli.eval.weights import WeightsError
from uniform_cli.generate.results import ResultsFile
from uniform_cli.media.io import write_mp4

WORDS = "a dog barks the sound of rain falls on roof".split()


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """config.json + model.safetensors + preprocessor_config.json + vocab.json/merges.txt/tokenizer files, as
    laion/larger_clap_music_and_speech holds them, of a model with 16-wide layers."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    folder = tmp_path_factory.mktemp("clap")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for token in WORDS + ["\u0120" + w for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz\u0120"):
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, projection_dim=8),
        # spec_size 256 with 64 mel bins is what takes the 1001 frames of a 10 s window, as in the real model
        audio_config=dict(window_size=4, num_mel_bins=64, spec_size=256, patch_size=4, patch_stride=(4, 4),
                          depths=[1, 1], num_heads=[1, 1], hidden_size=16, patch_embeds_hidden_size=8,
                          projection_dim=8, enable_fusion=False),
        projection_dim=8,
    )
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(folder)
    ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clap_loads_from_the_published_layout_and_matches_transformers(clap_dir):
    from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizer

    clap = load_clap(clap_dir)
    wave = click_wave(seconds=2.0, seed=1)
    audio, text = audio_embedding(clap, wave, SAMPLE_RATE), text_embedding(clap, "a dog barks")
    assert audio.shape == text.shape == (8,) and np.linalg.norm(audio) == pytest.approx(1.0, abs=1e-5)

    # The same numbers straight from transformers' classes (the 48 kHz resampling is tested on its own below)
    model = ClapModel.from_pretrained(clap_dir).eval()
    features = ClapFeatureExtractor.from_pretrained(clap_dir)([resample(wave, SAMPLE_RATE)], sampling_rate=CLAP_RATE,
                                                             return_tensors="pt")
    tokens = RobertaTokenizer.from_pretrained(clap_dir)(["a dog barks"], return_tensors="pt")
    with torch.inference_mode():
        want_audio = model.get_audio_features(**features)
        want_text = model.get_text_features(**tokens)
    want_audio = getattr(want_audio, "pooler_output", want_audio)[0].numpy()
    want_text = getattr(want_text, "pooler_output", want_text)[0].numpy()
    np.testing.assert_allclose(audio, want_audio / np.linalg.norm(want_audio), atol=1e-5)
    np.testing.assert_allclose(text, want_text / np.linalg.norm(want_text), atol=1e-5)


def test_resampling_to_48k_keeps_the_pitch_and_length():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(tone, 16000)
    assert abs(len(out) - 48000) <= 64
    spectrum = np.abs(np.fft.rfft(out[:48000] * np.hanning(48000)))
    assert np.argmax(spectrum) * CLAP_RATE / 48000 == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(out[4800:-4800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_a_missing_clap_model_says_what_to_download(tmp_path):
    with pytest.raises(WeightsError, match="laion/larger_clap_music_and_speech"):
        load_clap(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="preprocessor_config.json"):
        load_clap(tmp_path / "half")


def test_clap_score_per_task_from_results_captions(tmp_path, clap_dir):
    from uniform_cli.eval.clap import cosine

    results = ResultsFile(tmp_path / "results.jsonl")
    captions = {"a": "a dog barks", "b": "the sound of rain", "c": "rain falls on a roof", "d": ""}
    for i, (stem, text) in enumerate(captions.items()):
        write_mp4(tmp_path / f"{stem}.mp4", flash_frames(), FPS, click_wave(seed=i), SAMPLE_RATE)
        results.write({"id": stem, "task": "t2av" if stem != "c" else "a2v", "text": text, "time": 1.0})
    result = evaluate(tmp_path, metrics=["clap"], clap=str(clap_dir), device="cpu")
    d = result.details
    # "d" has no caption: the score rests on the three others, and says so
    assert d["clips"] == {"LAION-CLAP-Score": 3}
    assert d["per_task"]["t2av"]["clips"] == {"LAION-CLAP-Score": 2}
    clap = load_clap(clap_dir)
    from uniform_cli.media.io import read_audio

    own = {}
    for stem in "abc":
        wave, rate = read_audio(tmp_path / f"{stem}.mp4")
        own[stem] = cosine(text_embedding(clap, captions[stem]), audio_embedding(clap, wave, rate))
    assert result.values["LAION-CLAP-Score"] == pytest.approx(np.mean(list(own.values())), abs=1e-5)
    assert d["per_task"]["a2v"]["values"]["LAION-CLAP-Score"] == pytest.approx(own["c"], abs=1e-5)
    base = d["baselines"]["LAION-CLAP-Score"]["all"]
    assert base["clips"] == 3 and 0.0 <= base["p_value"] <= 1.0 and np.isfinite(base["shuffled"])
