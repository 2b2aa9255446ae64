"""What the demo measures: which kind of scene a clip looks and sounds like, and AV-Align over clip pairs.

Nearest-kind classification uses simple features of the world, no learned weights:
    video: frames pooled to 8 x 8, their mean colour over time and the standard deviation of their grey level
           over time (what is where, in which colour, and where it moves)
    audio: the log-mel's mean, standard deviation over time and mean absolute change between frames per mel bin
           (which pitches sound, how much they vary, how impulsive they are), with levels taken relative to the
           clip's median level (the codec peak-normalises each clip, so one loud instant would lower all the rest)
Every feature is standardised by the reference clips' statistics; a clip gets the kind of the nearest kind
centroid. AV-Align pairs, their shuffled-pair baseline and the permutation test are the eval stage's own
(`eval.av_align.av_align_scores`, `eval.pairing`); this module adds the demo's second sync measure.

Motion-onset correlation is a second sync measure, one that grain cannot swamp. AV-Align counts every strict
local maximum of a clip's optical flow as a motion peak, with no threshold, so any change to a still picture
makes peaks: a few grey levels of shimmer give generated clips a motion peak every two or three frames, and
any sound then hits some of them. The correlation compares the two curves themselves instead: per frame, the
mean absolute change of the grey picture since the previous frame, against librosa's onset strength (the
positive change of the log-mel) at that frame's time. Shimmer adds a little to every frame of the first
curve and hardly moves the correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from uniform_cli.media import mel as melspec


def video_features(frames: np.ndarray) -> np.ndarray:
    """uint8 `F H W 3` -> `256`: the colour frame pooled to 8 x 8 and averaged over time (what is where, in
    which colour), and the standard deviation over time of the grey frame pooled to 8 x 8 (where it moves)."""
    rgb = torch.from_numpy(np.asarray(frames)).float().permute(0, 3, 1, 2) / 255.0  # F 3 H W
    pooled = F.adaptive_avg_pool2d(rgb, (8, 8))  # F 3 8 8
    return torch.cat([pooled.mean(0).flatten(), pooled.mean(1).std(0).flatten()]).numpy()


def audio_features(wave: np.ndarray, sample_rate: int = melspec.SAMPLE_RATE) -> np.ndarray:
    """float `S` -> `192`: per mel bin, the log-mel's mean (relative to the clip's median level), its standard
    deviation over time and its mean absolute frame-to-frame change."""
    if sample_rate != melspec.SAMPLE_RATE:
        raise ValueError(f"audio features expect {melspec.SAMPLE_RATE} Hz, got {sample_rate}")
    wave_t = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
    log_mel = melspec.log_mel_spectrogram(melspec.normalize_wave(wave_t))[0]  # T M
    log_mel = log_mel - log_mel.median()
    flux = (log_mel[1:] - log_mel[:-1]).abs().mean(0)
    return torch.cat([log_mel.mean(0), log_mel.std(0), flux]).numpy()


@dataclass
class NearestKind:
    """A nearest-centroid classifier over standardised features."""

    kinds: list[str]
    centroids: np.ndarray  # K D
    mean: np.ndarray  # D
    scale: np.ndarray  # D

    @classmethod
    def fit(cls, features: np.ndarray, kinds: list[str]) -> "NearestKind":
        """Centroids of `features` (`N D`) per kind (`N` labels)."""
        if len(features) != len(kinds) or not len(kinds):
            raise ValueError(f"need one kind per feature row, got {len(features)} rows and {len(kinds)} kinds")
        mean = features.mean(0)
        std = features.std(0)
        # a floor on the scale: a feature that barely varies over the reference clips (a pixel nothing ever
        # crosses) must not turn tiny differences into huge distances
        scale = std + 0.1 * std.mean() + 1e-6
        z = (features - mean) / scale
        names = sorted(set(kinds))
        labels = np.array(kinds)
        centroids = np.stack([z[labels == k].mean(0) for k in names])
        return cls(names, centroids, mean, scale)

    def predict(self, features: np.ndarray) -> list[str]:
        z = (np.atleast_2d(features) - self.mean) / self.scale
        distance = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1)  # N K
        return [self.kinds[i] for i in distance.argmin(1)]

    def accuracy(self, features: np.ndarray, kinds: list[str]) -> float:
        """Share of rows whose predicted kind is the given one."""
        if not len(kinds):
            return float("nan")
        return float(np.mean([p == k for p, k in zip(self.predict(features), kinds)]))


def motion_energy(frames: np.ndarray) -> np.ndarray:
    """uint8 `F H W 3` -> `F`: mean absolute change of the grey picture since the previous frame (value 0
    repeats value 1, as AV-Align's flow trajectory does)."""
    grey = np.asarray(frames, dtype=np.float32).mean(-1)
    if grey.ndim != 3 or len(grey) < 2:
        raise ValueError(f"motion energy needs frames `F H W 3` with F >= 2, got shape {np.shape(frames)}")
    change = np.abs(np.diff(grey, axis=0)).mean((1, 2))
    return np.concatenate([change[:1], change])


def onset_strength_at_frames(wave: np.ndarray, sample_rate: int, num_frames: int, fps: float) -> np.ndarray:
    """float `S` -> `num_frames`: librosa's onset strength (10 ms hop) at the times i / fps of the frames."""
    import librosa

    hop = sample_rate // 100
    envelope = librosa.onset.onset_strength(y=np.asarray(wave, dtype=np.float32), sr=sample_rate, hop_length=hop)
    return np.interp(np.arange(num_frames) / fps, np.arange(len(envelope)) * hop / sample_rate, envelope)


def correlation_scores(motion: list[np.ndarray], onsets: list[np.ndarray]) -> np.ndarray:
    """Pearson correlation of the motion curve of clip i with the onset curve of clip j, `N N` (0 for a flat
    curve). Clips of one set have one frame count."""

    def standardised(curves: list[np.ndarray]) -> np.ndarray:
        x = np.stack(curves).astype(np.float64)
        x = x - x.mean(1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return standardised(motion) @ standardised(onsets).T
