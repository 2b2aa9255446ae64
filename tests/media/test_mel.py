"""The AudioLDM log-mel recipe: frame count, agreement with an independent numpy computation, tone placement."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from uniform_cli.media.mel import log_mel_spectrogram, mel_filters, mel_picture, normalize_wave, num_mel_frames

SR = 16000


def numpy_log_mel(wave: np.ndarray, n_fft: int = 1024, hop: int = 160, n_mels: int = 64) -> np.ndarray:
    """The same recipe written independently: explicit framing, periodic Hann window, numpy rFFT (float64)."""
    pad = (n_fft - hop) // 2
    x = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    count = 1 + (len(x) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]  # T n_fft
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(x[index] * window, axis=-1))  # T F
    basis = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=8000.0, norm="slaney", htk=False)
    return np.log(np.maximum(magnitude @ basis.T, 1e-5))  # T M


def tone(freq: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(SR * seconds), dtype=torch.float64) / SR
    return (0.5 * torch.sin(2 * torch.pi * freq * t)).float()


def mel_centres(n_mels: int = 64) -> np.ndarray:
    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=8000.0, htk=False)[1:-1]


def test_four_seconds_give_exactly_400_frames_of_64_bins():
    wave = torch.randn(2, 64000) * 0.1
    mel = log_mel_spectrogram(wave)
    assert mel.shape == (2, 400, 64)
    assert mel.dtype == torch.float32
    assert num_mel_frames(64000) == 400


def test_matches_independent_numpy_computation():
    rng = np.random.default_rng(0)
    waves = rng.uniform(-0.5, 0.5, size=(2, 16000)).astype(np.float32)
    waves[1] += 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / SR).astype(np.float32)
    ours = log_mel_spectrogram(torch.from_numpy(waves)).numpy()
    for b in range(2):
        reference = numpy_log_mel(waves[b])
        assert ours[b].shape == reference.shape == (100, 64)
        np.testing.assert_allclose(ours[b], reference, atol=1e-3, rtol=1e-4)


def test_silence_sits_at_the_log_floor():
    mel = log_mel_spectrogram(torch.zeros(1, 16000))
    assert torch.allclose(mel, torch.full_like(mel, float(np.log(1e-5))))


def test_one_kilohertz_tone_peaks_in_the_nearest_mel_bin():
    centres = mel_centres()
    profile = log_mel_spectrogram(tone(1000.0)[None])[0, 2:-2].mean(0)  # edges excluded: reflect padding
    assert int(profile.argmax()) == int(np.argmin(np.abs(centres - 1000.0)))


@pytest.mark.parametrize("bin_index", [5, 21, 40, 60])
def test_tone_at_a_bin_centre_peaks_in_that_bin(bin_index):
    freq = float(mel_centres()[bin_index])
    profile = log_mel_spectrogram(tone(freq)[None])[0, 2:-2].mean(0)
    assert int(profile.argmax()) == bin_index


def test_mel_filters_are_librosa_slaney_and_cached():
    basis = mel_filters(16000, 1024, 64, 0.0, 8000.0)
    expected = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0, norm="slaney", htk=False)
    assert basis.shape == (64, 513)
    np.testing.assert_allclose(basis.numpy(), expected, rtol=1e-6)
    basis.zero_()  # a caller writing into its copy must not poison the cache
    assert torch.equal(mel_filters(16000, 1024, 64, 0.0, 8000.0), torch.from_numpy(expected).float())


def test_normalize_wave_centres_and_sets_peak_to_half():
    wave = torch.tensor([[0.1, 0.3, 0.2, 0.6], [2.0, -4.0, 1.0, 1.0]])
    out = normalize_wave(wave)
    assert torch.allclose(out.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out.abs().amax(-1), torch.full((2,), 0.5), atol=1e-6)
    silent = normalize_wave(torch.zeros(1, 8))
    assert torch.equal(silent, torch.zeros(1, 8))


def test_rejects_unbatched_or_too_short_input():
    with pytest.raises(ValueError, match="B S"):
        log_mel_spectrogram(torch.zeros(16000))
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(torch.zeros(1, 100))


def test_mel_picture_puts_a_tone_at_its_mel_row_high_bands_up_and_silence_at_zero():
    s = np.arange(16000) / 16000
    tone = lambda hz: mel_picture((0.5 * np.sin(2 * np.pi * hz * s)).astype(np.float32))  # noqa: E731
    image = tone(1000)
    assert image.shape == (64, 100) and image.dtype == np.float32 and image.max() == 1.0 and image.min() >= 0
    bin_1khz = int(mel_filters()[:, round(1000 / 16000 * 1024)].argmax())  # the filter that peaks at 1 kHz
    brightest = lambda picture: 63 - int(picture.mean(axis=1).argmax())  # noqa: E731  (row 0: the highest band)
    assert abs(brightest(image) - bin_1khz) <= 1
    assert brightest(tone(300)) < brightest(tone(5000))
    assert not mel_picture(np.zeros(16000, np.float32)).any()
    assert mel_picture(np.full(100, 0.1, np.float32)).shape[0] == 64  # shorter than one window: padded
