"""AV-Align (Yariv et al., TempoTokens `av_align.py`): do sound onsets and visual motion peaks coincide?

Audio peaks are librosa onsets at 22.05 kHz (hop 512); video peaks are strict local maxima of the mean
Farnebäck optical-flow magnitude between consecutive grey frames; the score is the IoU of the two peak
sets, where an audio peak counts as a hit when it lies strictly within ±1/fps of some video peak.

Conventions kept from the reference so that numbers compare with the paper's:
- the flow trajectory has one value per frame: value i is the flow from frame i-1 to frame i, and value 0
  repeats the flow from frame 0 to frame 1; a peak at index i is at time i / fps;
- the reference divides by zero when neither modality has a peak; here that clip scores 0.0 (no evidence
  of alignment), and a clip with peaks in only one modality scores 0.0 as the formula gives;
- hits count audio peaks, so several onsets close to one motion peak can push a clip above 1, as in the
  reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ONSET_SAMPLE_RATE = 22050
"""librosa.load's default rate, at which the reference detects onsets."""
ONSET_HOP = 512
FARNEBACK_ARGS = (0.5, 3, 15, 3, 5, 1.2, 0)
"""pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags, as in the reference."""


class AVAlignError(ValueError):
    """Input that AV-Align cannot score (wrong shape, too few frames, no samples, bad rate)."""


def audio_peak_times(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset times in seconds of a mono (or `S C` / `C S` downmixed) wave, detected at 22.05 kHz."""
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        # Downmix along the shorter axis (channels), as librosa.load does.
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1 or wave.size == 0:
        raise AVAlignError(f"audio must be a non-empty mono wave `S`, got shape {wave.shape}")
    if sample_rate <= 0:
        raise AVAlignError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != ONSET_SAMPLE_RATE:
        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=ONSET_SAMPLE_RATE)
    envelope = librosa.onset.onset_strength(y=wave, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP)
    onsets = librosa.onset.onset_detect(onset_envelope=envelope, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP)
    return librosa.frames_to_time(onsets, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP)


def flow_trajectory(frames: np.ndarray) -> np.ndarray:
    """Mean Farnebäck flow magnitude per frame `F` of uint8 RGB frames `F H W 3` (value 0 repeats value 1)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise AVAlignError(f"frames must be uint8 `F H W 3`, got {frames.dtype} {frames.shape}")
    if len(frames) < 2:
        raise AVAlignError(f"optical flow needs at least 2 frames, got {len(frames)}")
    # RGB2GRAY on RGB frames gives the same grey image as the reference's BGR2GRAY on OpenCV's BGR frames.
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    magnitudes = []
    for prev, curr in zip(grey[:-1], grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(prev, curr, None, *FARNEBACK_ARGS)
        magnitudes.append(float(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0]))
    return np.asarray([magnitudes[0], *magnitudes], dtype=np.float64)


PEAK_TOLERANCE = 1e-6
"""Relative margin by which a peak must exceed its neighbours. OpenCV's optical flow differs between calls in
the last bits (threaded sums); on a nearly static picture that alone would make and unmake peaks."""


def local_maxima_times(trajectory: np.ndarray, fps: float) -> np.ndarray:
    """Times (index / fps) of the strict interior local maxima of a 1-D trajectory (by more than
    PEAK_TOLERANCE times its largest magnitude, so that rounding noise makes no peak)."""
    x = np.asarray(trajectory, dtype=np.float64)
    if len(x) < 3:
        return np.zeros(0)
    tol = PEAK_TOLERANCE * float(np.abs(x).max())
    is_peak = (x[1:-1] - x[:-2] > tol) & (x[1:-1] - x[2:] > tol)
    return (np.flatnonzero(is_peak) + 1) / fps


def video_peak_times(frames: np.ndarray, fps: float) -> np.ndarray:
    """Times in seconds of the motion peaks of uint8 RGB frames `F H W 3` shown at `fps`."""
    if fps <= 0:
        raise AVAlignError(f"fps must be positive, got {fps}")
    return local_maxima_times(flow_trajectory(frames), fps)


def peak_iou(audio_peaks: np.ndarray, video_peaks: np.ndarray, fps: float) -> float:
    """Hits / (|audio| + |video| - hits); a hit is an audio peak strictly within ±1/fps of a video peak.

    Returns 0.0 when both lists are empty (the reference would divide by zero).
    """
    audio_peaks = np.asarray(audio_peaks, dtype=np.float64).reshape(-1)
    video_peaks = np.asarray(video_peaks, dtype=np.float64).reshape(-1)
    if len(video_peaks) == 0:
        hits = 0
    else:
        distance = np.abs(audio_peaks[:, None] - video_peaks[None, :])
        hits = int((distance < 1.0 / fps).any(axis=1).sum())
    union = len(audio_peaks) + len(video_peaks) - hits
    return hits / union if union > 0 else 0.0


def av_align(frames: np.ndarray, fps: float, wave: np.ndarray, sample_rate: int) -> float:
    """AV-Align score (normally in [0, 1]) of one clip: uint8 RGB frames `F H W 3` at `fps` and a wave at `sample_rate`."""
    return peak_iou(audio_peak_times(wave, sample_rate), video_peak_times(frames, fps), fps)


@dataclass(frozen=True)
class Peaks:
    """One clip's AV-Align peaks in seconds, computed once, and the frame rate that sets the hit tolerance."""

    audio: np.ndarray
    video: np.ndarray
    fps: float


def clip_peaks(frames: np.ndarray, fps: float, wave: np.ndarray, sample_rate: int) -> Peaks:
    """The sound onsets and motion peaks of one clip (uint8 RGB frames `F H W 3` at `fps`, a wave at `sample_rate`)."""
    return Peaks(audio_peak_times(wave, sample_rate), video_peak_times(frames, fps), float(fps))


def peaks_iou(picture: Peaks, sound: Peaks) -> float:
    """AV-Align of the motion peaks of `picture` with the sound onsets of `sound` (at the picture's fps)."""
    return peak_iou(sound.audio, picture.video, picture.fps)


def av_align_scores(peaks: Sequence[Peaks]) -> np.ndarray:
    """AV-Align of the picture of clip i with the sound of clip j, `N N`, from one onset and one optical-flow
    pass per clip (the input of `eval.pairing`)."""
    return np.array([[peaks_iou(picture, sound) for sound in peaks] for picture in peaks])
