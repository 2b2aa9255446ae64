"""ImageBind score: Kaldi fbank against an independent numpy computation, frame sampling against FFmpeg's fps
filter, and a tiny random ImageBind saved in imagebind_huge.pth's layout, loaded back and scored."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from tests.eval.synthetic import FPS, SAMPLE_RATE, click_wave, flash_frames
from uniform_cli.eval.imagebind import (
    AUDIO_FRAMES,
    MEL_MEAN,
    MEL_STD,
    PIXEL_MEAN,
    PIXEL_STD,
    ImageBindAV,
    ImageBindConfig,
    audio_clip_bounds,
    ib_frame_indices,
    ib_scores,
    imagebind_audio_input,
    imagebind_embeddings,
    imagebind_video_input,
    kaldi_fbank,
    load_imagebind,
)
from uniform_cli.eval.weights import WEIGHT_FILES, FeatureInputError, WeightsError, weight_path
from uniform_cli.media.io import read_audio, read_video, write_mp4

TINY = ImageBindConfig(vision_width=32, vision_depth=2, vision_heads=2, audio_width=24, audio_depth=2, audio_heads=2,
                       embed_dim=16)


def _numpy_kaldi_fbank(wave: np.ndarray, rate: int, bins: int) -> np.ndarray:
    """Kaldi's compute-fbank-feats written from its definition, in float64, frame by frame."""
    window, shift, fft = 400, 160, 512
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / (window - 1))  # symmetric ("hanning")

    def mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    edges = np.linspace(mel(20.0), mel(rate / 2), bins + 2)
    banks = np.zeros((bins, fft // 2 + 1))
    for m in range(bins):
        for k in range(fft // 2):  # Kaldi leaves the Nyquist bin out
            f = mel(k * rate / fft)
            if edges[m] < f < edges[m + 2]:
                banks[m, k] = (f - edges[m]) / (edges[m + 1] - edges[m]) if f <= edges[m + 1] else \
                    (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
    rows = []
    for start in range(0, len(wave) - window + 1, shift):
        x = wave[start : start + window].astype(np.float64)
        x = x - x.mean()
        x = x - 0.97 * np.concatenate([x[:1], x[:-1]])
        power = np.abs(np.fft.rfft(x * hann, fft)) ** 2
        rows.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return np.stack(rows)


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


def test_kaldi_fbank_matches_an_independent_numpy_computation():
    wave = _tone(0.5)
    ours = kaldi_fbank(torch.from_numpy(wave)).numpy()
    expected = _numpy_kaldi_fbank(wave, SAMPLE_RATE, 128)
    assert ours.shape == expected.shape == (1 + (8000 - 400) // 160, 128)
    np.testing.assert_allclose(ours, expected, atol=2e-3, rtol=1e-4)
    # The 440 Hz tone is loudest in the band whose centre is nearest 440 Hz (centres are evenly spaced in mel).
    centres_mel = np.linspace(1127 * np.log(1 + 20 / 700), 1127 * np.log(1 + 8000 / 700), 130)[1:-1]
    centres_hz = 700 * (np.exp(centres_mel / 1127) - 1)
    assert ours.mean(axis=0).argmax() == np.abs(centres_hz - 440).argmin()
    with pytest.raises(FeatureInputError, match="400 samples"):
        kaldi_fbank(torch.zeros(399))


def test_audio_clips_follow_pytorchvideos_constant_clips_sampler():
    assert audio_clip_bounds(64000) == [(0, 32000), (16000, 48000), (32000, 64000)]  # 4 s: starts 0, 1, 2 s
    assert audio_clip_bounds(128000) == [(0, 32000), (48000, 80000), (96000, 128000)]  # 8 s: 0, 3, 6 s
    assert audio_clip_bounds(20000) == [(0, 32000)] * 3  # shorter than 2 s: the whole sound, three times
    assert audio_clip_bounds(50000)[1] == (9000, 41000)  # 3.125 s: starts 1.125 s / 2 apart, floored to samples


def test_audio_input_is_three_normalised_fbanks_padded_to_204_frames():
    wave = _tone(4.0)
    x = imagebind_audio_input(wave, SAMPLE_RATE)
    assert x.shape == (3, 1, 128, AUDIO_FRAMES)
    # 2 s give 198 frames; the rest is zero padding of the log-mel, normalised like the rest.
    torch.testing.assert_close(x[:, :, :, 198:], torch.full((3, 1, 128, 6), (0 - MEL_MEAN) / MEL_STD))

    def normalised(clip: torch.Tensor) -> torch.Tensor:
        return (kaldi_fbank(clip - clip.mean()).T - MEL_MEAN) / MEL_STD

    shared = torch.from_numpy(wave.copy())
    torch.testing.assert_close(x[0, 0, :, :198], normalised(shared[:32000]))
    # ImageBind centres clip 0 in place, so clip 1 (1-3 s) starts from a waveform whose first second is shifted.
    shared[:32000] -= shared[:32000].mean()
    torch.testing.assert_close(x[1, 0, :, :198], normalised(shared[16000:48000]), atol=1e-4, rtol=1e-4)
    # Hence a DC offset leaves clip 0 alone but steps clip 1 at its middle, which only the frames across it see.
    offset = imagebind_audio_input(wave + 0.2, SAMPLE_RATE)
    torch.testing.assert_close(offset[0], x[0], atol=1e-3, rtol=1e-4)
    changed = (offset[1] - x[1]).abs().amax(dim=(0, 1)) > 1e-2  # per fbank frame
    assert changed.nonzero().flatten().tolist() == [98, 99]  # the frames holding samples 15999 and 16000


def test_audio_at_another_rate_is_resampled_to_16k():
    t = np.arange(int(4.0 * 22050)) / 22050
    x = imagebind_audio_input((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 22050)
    assert x.shape == (3, 1, 128, AUDIO_FRAMES)
    expected = imagebind_audio_input((0.3 * np.sin(2 * np.pi * 1000 * np.arange(64000) / 16000)).astype(np.float32), 16000)
    loud = expected[0, 0, :, :198].mean(dim=1).argmax()  # the band of the 1 kHz tone
    assert x[0, 0, :, :198].mean(dim=1).argmax() == loud
    torch.testing.assert_close(x[:, :, loud, 10:190], expected[:, :, loud, 10:190], atol=0.02, rtol=0)


def _indexed_video(path, num_frames: int, fps: float) -> None:
    """Frames that carry their own index as 8 black/white bars, so a decoded frame says which it is."""
    frames = np.zeros((num_frames, 32, 64, 3), np.uint8)
    for i in range(num_frames):
        for b in range(8):
            frames[i, :, 8 * b : 8 * b + 8] = 255 * ((i >> b) & 1)
    write_mp4(path, frames, fps, crf=0)


def _ffmpeg_fps_filter_indices(path) -> list[int]:
    """The frames FFmpeg's `fps=0.5` filter keeps (what av-benchmark's StreamingMediaDecoder asks for)."""
    import av

    kept = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source, fps, sink = graph.add_buffer(template=stream), graph.add("fps", "0.5"), graph.add("buffersink")
        source.link_to(fps)
        fps.link_to(sink)
        graph.configure()
        for frame in [*container.decode(stream), None]:
            graph.push(frame)
            while True:
                try:
                    image = graph.pull().to_ndarray(format="rgb24")
                except (av.BlockingIOError, av.EOFError):
                    break
                kept.append(sum(int(image[16, 8 * b + 4, 0] > 127) << b for b in range(8)))
    return kept


@pytest.mark.parametrize("num_frames,fps", [(68, 17), (136, 17), (100, 25), (121, Fraction(30000, 1001))])
def test_frame_sampling_matches_ffmpegs_fps_filter(tmp_path, num_frames, fps):
    path = tmp_path / "indexed.mp4"
    _indexed_video(path, num_frames, fps)
    decoded, decoded_fps = read_video(path)
    indices = ib_frame_indices(len(decoded), decoded_fps)
    assert len(indices) == int(num_frames / fps / 2)  # av-benchmark keeps int(0.5 x seconds) frames
    assert indices == _ffmpeg_fps_filter_indices(path)[: len(indices)]


def test_frame_sampling_needs_four_seconds():
    with pytest.raises(FeatureInputError, match="at least 4 s"):
        ib_frame_indices(67, 17.0)  # 3.94 s: av-benchmark's int(0.5 x 3.94) = 1 frame, no pair


def test_video_input_pairs_frames_in_three_crops():
    frames = np.zeros((68, 90, 160, 3), np.uint8)  # landscape: crops run left to right
    frames[:, :, :40] = 255
    x = imagebind_video_input(frames, FPS)
    assert x.shape == (3, 3, 2, 224, 224)  # 3 crops x 1 pair of frames (2 frames from 4 s)
    white = (1 - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
    black = -torch.tensor(PIXEL_MEAN) / torch.tensor(PIXEL_STD)
    torch.testing.assert_close(x[0, :, :, :, 5], white[:, None, None].expand(3, 2, 224))  # left crop sees white
    torch.testing.assert_close(x[2, :, :, :, 5], black[:, None, None].expand(3, 2, 224))  # right crop does not
    square = imagebind_video_input(flash_frames(frames=136, size=64), FPS)
    assert square.shape == (9, 3, 2, 224, 224)  # 8 s: 4 frames, 3 pairs, in 3 identical centre crops
    torch.testing.assert_close(square[0:3], square[3:6])


def test_published_keys_and_shapes_at_the_huge_size():
    with torch.device("meta"):
        state = ImageBindAV().state_dict()
    # imagebind_huge.pth holds 1311 tensors; 569 of them are the vision and audio towers.
    assert len(state) == 569
    shapes = {
        "modality_preprocessors.vision.cls_token": (1, 1, 1280),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (1280, 3, 2, 14, 14),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, 257, 1280),
        "modality_preprocessors.audio.rgbt_stem.proj.weight": (768, 1, 16, 16),
        "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (768,),
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 229, 768),
        "modality_trunks.vision.pre_transformer_layer.0.weight": (1280,),
        "modality_trunks.vision.blocks.31.attn.in_proj_weight": (3840, 1280),
        "modality_trunks.audio.blocks.11.attn.bias_k": (1, 1, 768),
        "modality_trunks.audio.blocks.11.mlp.fc2.weight": (768, 3072),
        "modality_heads.vision.2.weight": (1024, 1280),
        "modality_heads.audio.0.bias": (768,),
        "modality_postprocessors.audio.1.log_logit_scale": (),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny random ImageBind saved as imagebind_huge.pth, with a text tower's keys beside the two towers."""
    torch.manual_seed(0)
    model = ImageBindAV(TINY).eval()
    state = dict(model.state_dict())
    state["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.randn(96, 32)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(2.6)
    state["modality_preprocessors.imu.cls_token"] = torch.randn(1, 1, 8)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / WEIGHT_FILES["imagebind"].filename)
    return model, folder, state


def test_round_trip_in_published_layout_and_score(published, tmp_path):
    model, folder, _ = published
    loaded = load_imagebind(weight_path(folder, "imagebind"), TINY)
    assert not any(".text." in k or ".imu." in k for k in loaded.state_dict())
    path = tmp_path / "clip.mp4"
    write_mp4(path, flash_frames(), FPS, click_wave(), SAMPLE_RATE)
    frames, fps = read_video(path)
    wave, rate = read_audio(path, SAMPLE_RATE)
    vision, audio = imagebind_embeddings(loaded, frames, fps, wave, rate)
    assert vision.shape == audio.shape == (16,)
    np.testing.assert_allclose(np.linalg.norm(vision), 1.0, rtol=1e-5)  # one centre crop of one pair
    np.testing.assert_allclose(np.linalg.norm(audio), 20.0, rtol=0.1)  # three unit embeddings x 20, averaged
    expected = imagebind_embeddings(model, frames, fps, wave, rate)
    np.testing.assert_allclose(vision, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(audio, expected[1], rtol=1e-5, atol=1e-5)
    score = ib_scores(vision[None], audio[None])
    assert score.shape == (1,) and -1 <= score[0] <= 1


def test_a_file_that_does_not_match_is_named(published, tmp_path):
    _, _, state = published
    with pytest.raises(WeightsError, match="does not match ImageBind"):
        load_imagebind(published[1] / WEIGHT_FILES["imagebind"].filename, ImageBindConfig(vision_width=64,
                       vision_depth=2, vision_heads=2, audio_width=24, audio_depth=2, audio_heads=2, embed_dim=16))
    broken = {k: v for k, v in state.items() if not k.startswith("modality_heads.audio")}
    torch.save(broken, tmp_path / "imagebind_huge.pth")
    with pytest.raises(WeightsError, match="modality_heads.audio"):
        load_imagebind(tmp_path / "imagebind_huge.pth", TINY)
    with pytest.raises(WeightsError, match=r"imagebind_huge\.pth.*dl\.fbaipublicfiles\.com"):
        weight_path(tmp_path / "empty", "imagebind")


def test_ib_scores_are_cosine_similarities():
    from scipy.spatial.distance import cosine

    rng = np.random.default_rng(0)
    vision, audio = rng.standard_normal((5, 16)), 20 * rng.standard_normal((5, 16))
    expected = [1 - cosine(v, a) for v, a in zip(vision, audio)]
    np.testing.assert_allclose(ib_scores(vision, audio), expected, rtol=1e-12)
    np.testing.assert_allclose(ib_scores(vision, 3 * vision), 1.0)
    with pytest.raises(FeatureInputError, match="one shape"):
        ib_scores(vision, audio[:4])


def test_eval_reports_ib_score_with_its_shuffled_pair_baseline(published, tmp_path, monkeypatch):
    from dataclasses import replace

    from uniform_cli.eval import run

    # imagebind_huge.pth carries no config, so `uniform eval` builds the huge towers; here the same loader
    # builds the tiny ones from the same published-layout file.
    monkeypatch.setitem(run.EXTRACTORS, "imagebind", replace(
        run.EXTRACTORS["imagebind"], load=lambda path, device: load_imagebind(path, TINY).to(device)))
    model, weights, _ = published
    clips = {}
    for i, stem in enumerate(("a", "b", "c")):
        frames, wave = flash_frames(events=(10 + 5 * i, 40)), click_wave(seed=i)
        write_mp4(tmp_path / f"{stem}.mp4", frames, FPS, wave, SAMPLE_RATE)
        (frames, fps), (wave, rate) = read_video(tmp_path / f"{stem}.mp4"), read_audio(tmp_path / f"{stem}.mp4")
        # The decoded AAC runs past the picture's 4 s; eval's window keeps the picture's length of sound.
        clips[stem] = imagebind_embeddings(model, frames, fps, wave[: round(len(frames) / fps * rate)], rate)
    result = run.evaluate(tmp_path, metrics=["ib"], weights_dir=weights, device="cpu")
    own = {s: float(ib_scores(v[None], a[None])[0]) for s, (v, a) in clips.items()}
    assert result.values["IB-Score"] == pytest.approx(np.mean(list(own.values())), abs=1e-5)
    assert result.details["per_clip"]["IB-Score"]["b"]["score"] == pytest.approx(own["b"], abs=1e-5)
    base = result.details["baselines"]["IB-Score"]["all"]
    assert base["clips"] == 3 and 0.0 <= base["p_value"] <= 1.0
    shuffled = np.mean([ib_scores(clips[s][0][None], clips[t][1][None])[0] for s in clips for t in clips if s != t])
    assert base["shuffled"] == pytest.approx(shuffled, abs=1e-5)
