"""Synchformer and DeSync: av-benchmark's window protocol and offset math as pure functions, the
preprocessing against independent computations, and a tiny model saved in the published layout."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniform_cli.eval.motionformer import DividedAttention
from uniform_cli.eval.synchformer import (
    WINDOW_SECONDS,
    Synchformer,
    SynchformerConfig,
    clip_segments,
    clip_sync,
    desync,
    htk_mel_filters,
    load_synchformer,
    num_segments,
    offset_grid,
    predicted_offsets,
    resample_indices,
    resample_wave,
    sync_frames,
    sync_log_mel,
    window_starts,
)
from uniform_cli.eval.weights import WEIGHT_FILES, FeatureInputError, WeightsError, weight_path

TINY = SynchformerConfig(width=16, video_depth=1, video_heads=2, audio_depth=1, audio_heads=2, sync_depth=1, sync_heads=2)


def test_windows_are_the_first_and_last_4_8_seconds():
    assert WINDOW_SECONDS == pytest.approx(4.8)
    assert num_segments(200, 16, 8) == 24 and num_segments(128000, 10240, 5120) == 24  # 8 s, as MMAudio scores
    assert clip_segments(8.0) == 24 and clip_segments(4.8) == 14 and clip_segments(4.0) == 11
    assert window_starts(24) == [0, 10]
    assert window_starts(14) == [0, 0]  # one window, counted twice as av-benchmark does
    with pytest.raises(FeatureInputError, match="4.8 s"):
        window_starts(11)


def test_offsets_come_from_the_21_class_grid_and_desync_is_mean_absolute_offset():
    grid = offset_grid()
    assert len(grid) == 21 and grid[0] == -2.0 and grid[10] == 0.0 and grid[-1] == 2.0
    np.testing.assert_allclose(np.diff(grid.numpy()), 0.2)
    logits = torch.full((3, 21), -1.0)
    logits[0, 11], logits[1, 8], logits[2, 10] = 5.0, 5.0, 5.0
    assert predicted_offsets(logits) == [0.2, -0.4, 0.0]
    assert desync([[0.2, -0.4], [0.0, 0.0]]) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        desync([])


def test_resampling_to_25_fps_keeps_drops_or_repeats_frames():
    np.testing.assert_array_equal(resample_indices(30, 25.0, 25.0, 30), np.arange(30))
    np.testing.assert_array_equal(resample_indices(30, 50.0, 25.0, 15), np.arange(0, 30, 2))
    np.testing.assert_array_equal(resample_indices(10, 12.5, 25.0, 20), np.arange(20) // 2)
    # 17 fps: every output frame shows the latest source frame not after it (within half an output frame)
    source = resample_indices(68, 17.0, 25.0, 100)
    assert source[0] == 0 and source[-1] == 67 and np.all(np.diff(source) >= 0)
    assert np.all(np.abs(source / 17.0 - np.arange(100) / 25.0) <= 1 / 17.0 + 0.5 / 25.0)


def test_sound_is_resampled_to_16_khz_keeping_length_and_pitch():
    t = np.arange(2 * 22050) / 22050
    wave = resample_wave(np.sin(2 * np.pi * 440.0 * t).astype(np.float32), 22050)
    assert wave.dtype == np.float32 and abs(len(wave) - 32000) <= 16
    assert np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave) == pytest.approx(440.0, abs=1.0)
    same = np.zeros(100, np.float32)
    assert resample_wave(same, 16000) is not None and len(resample_wave(same, 16000)) == 100


def test_frames_are_centre_cropped_to_224_and_scaled_to_minus_one_one():
    frames = np.random.default_rng(0).integers(0, 256, (2, 224, 448, 3), dtype=np.uint8)
    x = sync_frames(frames)
    # shorter side already 224: the resize keeps the picture and the crop takes the middle 224 columns
    expected = torch.from_numpy(frames[:, :, 112:336]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    tall = sync_frames(np.full((1, 90, 60, 3), 255, np.uint8))
    assert tall.shape == (1, 3, 224, 224) and torch.allclose(tall, torch.ones(()))


def test_mel_matches_librosa_htk_power_mel():
    import librosa

    filters = htk_mel_filters()
    reference = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    np.testing.assert_allclose(filters.numpy().T, reference, atol=1e-6)
    wave = 0.1 * np.random.default_rng(1).standard_normal((2, 10240)).astype(np.float32)
    ours = sync_log_mel(torch.from_numpy(wave))
    assert ours.shape == (2, 66, 128)
    power = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=16000, n_fft=1024, hop_length=160, win_length=400, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None,
    )  # 2 128 65
    log_mel = np.pad(np.log(power + 1e-6), ((0, 0), (0, 0), (0, 1)))  # zero-padded after the log to 66 frames
    expected = (log_mel + 4.2677393) / (2 * 4.5689974)
    np.testing.assert_allclose(ours.numpy(), expected.transpose(0, 2, 1), atol=2e-4)


def test_divided_attention_equals_attention_within_each_group_plus_cls():
    torch.manual_seed(0)
    attention = DividedAttention(8, 2).eval()
    steps, patches = 3, 4
    x = torch.randn(2, 1 + steps * patches, 8)
    q, k, v = attention.qkv(x).reshape(2, -1, 3, 2, 4).permute(2, 0, 3, 1, 4)  # B h N d

    def attend(idx_q, idx_kv):
        weights = torch.softmax(q[:, :, idx_q] @ k[:, :, idx_kv].transpose(-1, -2) / 2.0, dim=-1)
        return weights @ v[:, :, idx_kv]

    for along_time in (True, False):
        out = torch.empty_like(q)
        out[:, :, :1] = attend([0], list(range(q.shape[2])))
        for g in range(patches if along_time else steps):
            members = [1 + s * patches + g for s in range(steps)] if along_time else [1 + g * patches + p for p in range(patches)]
            out[:, :, members] = attend(members, [0] + members)
        expected = attention.proj(out.transpose(1, 2).reshape(2, -1, 8))
        torch.testing.assert_close(attention(x, steps, along_time), expected, atol=1e-5, rtol=1e-5)


def _published(tmp_path, state):
    torch.save(state, tmp_path / WEIGHT_FILES["synchformer"].filename)
    return weight_path(tmp_path, "synchformer")


def _random_tiny() -> Synchformer:
    torch.manual_seed(0)
    model = Synchformer(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # tokens and embeddings start at zero; make every tensor count
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_published_layout_holds_the_checkpoint_names_and_shapes():
    with torch.device("meta"):
        state = Synchformer().state_dict()
    assert len(state) == 513  # the count of synchformer_state_dict.pth, loaded strictly by av-benchmark
    shapes = {
        "vfeat_extractor.patch_embed_3d.proj.weight": (768, 3, 2, 16, 16),
        "vfeat_extractor.pos_embed": (1, 197, 768),
        "vfeat_extractor.temp_embed": (1, 8, 768),
        "vfeat_extractor.blocks.11.timeattn.qkv.weight": (2304, 768),
        "vfeat_extractor.spatial_attn_agg.self_attn.in_proj_weight": (2304, 768),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "afeat_extractor.ast.embeddings.patch_embeddings.projection.weight": (768, 1, 16, 16),
        "afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "afeat_extractor.freq_attn_agg.cls_token": (1, 1, 768),
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768),
        "transformer.blocks.2.mlp.2.weight": (768, 3072),
        "transformer.off_head.weight": (21, 768),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_tiny_synchformer_round_trip_scores_start_and_end_windows(tmp_path):
    model = _random_tiny()
    loaded = load_synchformer(_published(tmp_path, model.state_dict()), TINY)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (94, 48, 64, 3), dtype=np.uint8)  # 5.53 s at 17 fps
    wave = 0.1 * rng.standard_normal(88000).astype(np.float32)  # 5.5 s
    result = clip_sync(loaded, frames, 17.0, wave, 16000)
    assert result.seconds == pytest.approx(5.5)
    assert result.window_starts == [0.0, 0.64]  # 16 segments: windows at segments 0 and 2
    assert all(o in offset_grid().tolist() for o in map(float, result.offsets)) and len(result.offsets) == 2
    assert result.desync == pytest.approx(np.mean(np.abs(result.offsets)))
    again = clip_sync(model, frames, 17.0, wave, 16000, batch_segments=5)
    assert again == result



def test_short_clips_and_bad_files_are_refused(tmp_path):
    model = _random_tiny()
    frames = np.zeros((68, 32, 32, 3), np.uint8)
    with pytest.raises(FeatureInputError, match=r"4\.8 s windows.*4\.00 s"):
        clip_sync(model, frames, 17.0, np.zeros(64000, np.float32), 16000)
    with pytest.raises(FeatureInputError, match="16000 Hz"):
        clip_sync(model, frames, 17.0, np.zeros(64000, np.float32), 22050)
    state = {k.replace("off_head", "head"): v for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="does not match Synchformer"):
        load_synchformer(_published(tmp_path, state), TINY)
    with pytest.raises(WeightsError, match=r"synchformer_state_dict\.pth.*MMAudio"):
        weight_path(tmp_path / "nowhere", "synchformer")


def test_load_casts_a_half_precision_file_to_float32(tmp_path):
    model = _random_tiny()
    loaded = load_synchformer(_published(tmp_path, {k: v.half() for k, v in model.state_dict().items()}), TINY)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.zeros(1, 14, 8, 16), torch.zeros(1, 14, 6, 16)
    assert F.softmax(loaded.compare(*x), dim=-1).shape == (1, 21)


def test_eval_desync_scores_each_clip_through_the_extractor_and_keeps_its_windows():
    from uniform_cli.eval.run import EXTRACTORS, METRICS, clip_features

    model = _random_tiny()
    rng = np.random.default_rng(2)
    folder = {}
    for stem, seconds in (("a", 5.0), ("b", 8.0)):
        frames = rng.integers(0, 256, (int(seconds * 25), 32, 40, 3), dtype=np.uint8)
        wave = 0.1 * rng.standard_normal(int(seconds * 22050)).astype(np.float32)  # resampled to 16 kHz inside
        folder[stem] = clip_features(EXTRACTORS["synchformer"], model, frames, 25.0, wave, 22050, None)
    spec = METRICS["desync"]
    b = folder["b"].values[0]["sync"]
    assert b.window_starts == [0.0, 3.2]  # 8 s: the first and the last 4.8 s, as av-benchmark scores MMAudio
    clip = spec.per_clip(folder["b"])
    assert [w[:2] for w in clip["windows"]] == [[0.0, 4.8], [3.2, 8.0]] and [w[2] for w in clip["windows"]] == b.offsets
    every = folder["a"].values[0]["sync"].offsets + b.offsets
    assert spec.compute(folder, None) == {"DeSync": pytest.approx(np.mean(np.abs(every)))}
