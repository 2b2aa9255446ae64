import numpy as np
import pytest

from tests.eval.synthetic import EVENT_FRAMES, FPS, SAMPLE_RATE, click_wave, flash_frames
from uniform_cli.eval.av_align import (
    AVAlignError,
    audio_peak_times,
    av_align,
    flow_trajectory,
    local_maxima_times,
    peak_iou,
    video_peak_times,
)

EVENT_TIMES = np.array(EVENT_FRAMES) / FPS


def test_flashes_and_clicks_at_the_same_instants_score_one():
    assert av_align(flash_frames(), FPS, click_wave(), SAMPLE_RATE) == pytest.approx(1.0)


def test_sound_shifted_by_half_a_second_scores_low():
    assert av_align(flash_frames(), FPS, click_wave(shift_s=0.5), SAMPLE_RATE) < 0.3


def test_video_peaks_are_the_flash_frames():
    np.testing.assert_allclose(video_peak_times(flash_frames(), FPS), EVENT_TIMES)


def test_audio_peaks_are_within_a_frame_of_the_clicks():
    peaks = audio_peak_times(click_wave(), SAMPLE_RATE)
    assert len(peaks) == len(EVENT_TIMES)
    assert np.abs(peaks - EVENT_TIMES).max() < 1 / FPS


def test_flow_trajectory_has_one_value_per_frame_and_repeats_the_first():
    trajectory = flow_trajectory(flash_frames())
    assert trajectory.shape == (68,)
    assert trajectory[0] == trajectory[1]
    assert trajectory[EVENT_FRAMES[0]] > 0 and trajectory[5] == 0


def test_local_maxima_are_strict():
    # A plateau is not a peak; the ends are never peaks.
    assert list(local_maxima_times([3, 1, 2, 2, 1, 5, 0, 9], fps=1)) == [5.0]


def test_iou_counts_hits_within_one_frame():
    fps = 10
    assert peak_iou([1.0, 2.0], [1.05, 2.0], fps) == 1.0
    # 0.1 s apart is not strictly within ±1/fps: no hit, IoU = 0 / (1 + 1).
    assert peak_iou([1.0], [1.1 + 1e-9], fps) == 0.0
    # One hit, one audio-only peak, one video-only peak: 1 / (2 + 2 - 1).
    assert peak_iou([1.0, 3.0], [1.0, 5.0], fps) == pytest.approx(1 / 3)


def test_empty_peak_lists_score_zero():
    assert peak_iou([], [], 17) == 0.0
    assert peak_iou([1.0], [], 17) == 0.0
    assert peak_iou([], [1.0], 17) == 0.0
    # A still, silent clip has no peaks at all and still gets a score.
    still = np.zeros((20, 32, 32, 3), np.uint8)
    assert av_align(still, FPS, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE) == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(AVAlignError, match="uint8"):
        av_align(flash_frames().astype(np.float32), FPS, click_wave(), SAMPLE_RATE)
    with pytest.raises(AVAlignError, match="at least 2 frames"):
        flow_trajectory(flash_frames()[:1])
    with pytest.raises(AVAlignError, match="non-empty"):
        audio_peak_times(np.zeros(0, np.float32), SAMPLE_RATE)


def test_rounding_noise_makes_no_motion_peak():
    from uniform_cli.eval.av_align import local_maxima_times

    flat = np.full(30, 0.25)
    wobble = flat + np.random.default_rng(0).normal(scale=1e-10, size=30)  # OpenCV's run-to-run differences
    assert len(local_maxima_times(wobble, 17.0)) == 0
    bumps = flat.copy()
    bumps[[5, 17]] += 0.01
    np.testing.assert_allclose(local_maxima_times(bumps + wobble, 17.0), [5 / 17, 17 / 17])
