"""Jobs of any length and any span: lengths exact, given media exact, seams continuous, bad jobs named."""

import numpy as np
import pytest

from tests.generate.conftest import chirp, moving_gradient
from uniform_cli.config import ClipSpec
from uniform_cli.generate.jobs import Job, check_job, parse_span, plan_timeline
from uniform_cli.generate.pipeline import PipelineError

SPEC = ClipSpec(fps=17, size=32, seconds=4.0, sample_rate=16000)


def steady_scene(seconds: float) -> np.ndarray:
    return moving_gradient(round(seconds * 17), 32, 32)


def tone(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * 16000)) / 16000)).astype(np.float32)


def test_a_long_v2a_keeps_every_frame_and_has_sound_for_all_of_it(light_pipe):
    video = steady_scene(10.5)
    out = light_pipe.generate([Job("waves", "v2a", video=video)], seed=0)
    assert np.array_equal(out.frames[0], video)  # the given frames themselves, to the last
    assert len(video) == 178 and out.wave[0].shape == (167529,)  # 178 frames = 10.47 s of sound, to the sample
    assert out.windows[0] == [0, 3, 6, 7]  # each window starts 1 s before what is left; the last ends at 11 s
    quiet = [np.abs(out.wave[0][s : s + 16000]).max() for s in range(0, 160000, 16000)]
    assert min(quiet) > 0  # no second of silence: every window made sound


def test_a2v_and_t2av_of_any_length(light_pipe):
    wave = chirp(6.3, 16000)
    out = light_pipe.generate([Job("drums", "a2v", audio=wave), Job("a ball", "t2av", seconds=9.0)], seed=1)
    assert np.array_equal(out.wave[0], wave) and out.frames[0].shape == (107, 32, 32, 3)  # round(6.3 * 17)
    assert out.frames[1].shape == (153, 32, 32, 3) and out.wave[1].shape == (144000,)
    assert out.frames[1].std() > 0 and np.abs(out.wave[1]).max() > 0


def test_extend_keeps_the_given_clip_and_continues_both_modalities(light_pipe):
    video, audio = steady_scene(4.0), tone(4.0)
    out = light_pipe.generate([Job("", "extend", video=video, audio=audio, seconds=8.0)], seed=2)
    frames, wave = out.frames[0], out.wave[0]
    assert frames.shape == (136, 32, 32, 3) and wave.shape == (128000,)
    assert np.array_equal(frames[:68], video) and np.array_equal(wave[:64000], audio)
    assert frames[68:].std() > 0 and np.abs(wave[64000:]).max() > 0
    assert out.windows[0] == [3, 4]  # conditioned on its last second, then the rest


@pytest.mark.parametrize("modality", ["audio", "video", "both"])
def test_retake_redoes_only_its_span(light_pipe, modality):
    video, audio = steady_scene(6.0), tone(6.0)
    out = light_pipe.generate([Job("", "retake", video=video, audio=audio, span=(2.0, 3.0), modality=modality)],
                              seed=3)
    frames, wave = out.frames[0], out.wave[0]
    assert frames.shape == video.shape and wave.shape == audio.shape
    redo_video, redo_audio = modality in ("video", "both"), modality in ("audio", "both")
    # outside the span the media are the given ones, sample for sample and frame for frame
    assert np.array_equal(frames[:34], video[:34]) and np.array_equal(frames[51:], video[51:])
    assert np.array_equal(wave[:32000], audio[:32000]) and np.array_equal(wave[48000:], audio[48000:])
    assert np.array_equal(frames[34:51], video[34:51]) != redo_video
    assert np.array_equal(wave[32000:48000], audio[32000:48000]) != redo_audio
    if redo_audio:  # new sound between the crossfades (at most 0.1 s at each edge, inside the span)
        assert np.mean(wave[33600:46400] != audio[33600:46400]) > 0.9


def test_i2av_starts_from_the_image(light_pipe):
    image = steady_scene(1.0)[0]
    out = light_pipe.generate([Job("a ball", "i2av", image=image)], seed=4)
    assert out.frames[0].shape == (68, 32, 32, 3) and np.array_equal(out.frames[0][0], image)
    assert out.wave[0].shape == (64000,)


def test_seams_are_no_jumps(light_pipe):
    """A steady tone given (a2v, 12 s): at each window seam the picture changes no more than elsewhere."""
    out = light_pipe.generate([Job("", "a2v", audio=tone(12.0))], seed=5)
    frames = out.frames[0].astype(float)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    seams = [17 * (s + 1) - 1 for s in out.windows[0][1:]]  # the last frame of each window's overlap
    inside = np.delete(change, seams)
    assert max(change[seams]) <= inside.max()


def test_results_do_not_depend_on_the_batch(light_pipe):
    alone = light_pipe.generate([Job("rain", "t2av", seconds=6.0)], seed=7)
    mixed = light_pipe.generate([Job("x", "v2a", video=steady_scene(9.0)), Job("rain", "t2av", seconds=6.0)],
                                seed=[1, 7])
    assert np.array_equal(alone.frames[0], mixed.frames[1]) and np.array_equal(alone.wave[0], mixed.wave[1])


def test_bad_jobs_are_named(light_pipe):
    cases = [
        (Job("", "extend", video=steady_scene(4.0), audio=tone(4.0), seconds=3.0), "not longer than the video"),
        (Job("", "extend", video=steady_scene(4.0), audio=tone(4.0)), "extend needs the output length"),
        (Job("", "extend", video=steady_scene(4.0)), "needs a video with sound"),
        (Job("", "retake", video=steady_scene(4.0), audio=tone(4.0), span=(3.0, 5.0)), "span 3-5 is not inside"),
        (Job("", "retake", video=steady_scene(4.0), audio=tone(4.0)), "retake needs a span"),
        (Job("", "i2av"), "i2av needs an image"),
        (Job("", "v2a", video=steady_scene(4.0), seconds=6.0), "longer than the given media"),
        (Job("", "dance"), "unknown task"),
    ]
    for job, message in cases:
        with pytest.raises(PipelineError, match=message):
            light_pipe.generate([job])
    with pytest.raises(PipelineError, match="overlap"):
        light_pipe.generate([Job("", "t2av")], overlap=4)


def test_timeline_masks():
    tl = plan_timeline(Job("", "v2a", video=steady_scene(10.5)), SPEC, 20)
    assert tl.whole == 11 and not tl.generate_video.any() and tl.generate_audio.all()
    tl = plan_timeline(Job("", "retake", video=steady_scene(6.0), audio=tone(6.0), span=(2.1, 3.0),
                           modality="audio"), SPEC, 20)
    assert np.flatnonzero(tl.generate_audio).tolist() == [10, 11, 12, 13, 14] and not tl.generate_video.any()
    assert check_job("t2av", SPEC) == (4.0, [])
    assert parse_span("2.5-3") == (2.5, 3.0)
    with pytest.raises(ValueError, match="START-END"):
        parse_span("2.5")


V2A_PEAK = """
import sys
import numpy as np
import torch
from uniform_cli.generate.jobs import Job
from uniform_cli.generate.pipeline import UniFormPipeline
from uniform_cli.memory import peak_memory_bytes
torch.set_num_threads(1)  # the two lengths run side by side
pipe = UniFormPipeline.from_pretrained(sys.argv[1], device="cpu")
video = np.full((round(float(sys.argv[2]) * 17), 32, 32, 3), 128, np.uint8)
out = pipe.generate([Job("waves", "v2a", video=video)], steps=2, seed=0)
print(peak_memory_bytes("cpu")[0], len(out.windows[0]))
"""


def test_a_longer_output_needs_no_more_memory_than_its_media(light_checkpoint):
    """Windows run one after another: a 60 s V2A job peaks no higher than a 12 s one, but for its media."""
    import subprocess
    import sys

    # A fresh process per length: a process's peak resident set cannot be reset. peak_memory_bytes reads VmHWM
    # on Linux, as ru_maxrss would carry this test process's own (larger) peak into each child.
    runs = [subprocess.Popen([sys.executable, "-c", V2A_PEAK, str(light_checkpoint), str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seconds in (12, 60)]
    results = []
    for run in runs:
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr
        results.append([int(x) for x in stdout.split()])
    (peak_12, windows_12), (peak_60, windows_60) = results
    assert (windows_12, windows_60) == (4, 20)
    # What the 60 s job itself must hold: the given video and the timeline's copy of it, the wave and its two
    # per-sample masks (about 12 MB at 32 px). The 30 MB on top cover the allocator's slack between two
    # processes (the measured difference is the 12 MB); 3 MB kept per window (16 windows more) exceeds it.
    own = 2 * (60 * 17 * 32 * 32 * 3) + 60 * 16000 * (4 + 2)
    assert peak_60 <= peak_12 + 30 * 2**20 + own, (peak_12, peak_60)


def spectral_flux(wave: np.ndarray, n: int = 1024, hop: int = 256) -> np.ndarray:
    """Positive change of the magnitude spectrum from one hop to the next, `len(wave) // hop`-ish long."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, n)[::hop] * np.hanning(n)
    magnitude = np.abs(np.fft.rfft(frames, axis=1))
    return np.maximum(magnitude[1:] - magnitude[:-1], 0).sum(axis=1)


def test_seams_are_no_jumps_in_sound(light_pipe):
    """A steady scene given (v2a, 12 s): at each seam, where a window's new sound begins, the spectral flux
    stays within what the sound has elsewhere."""
    out = light_pipe.generate([Job("", "v2a", video=steady_scene(12.0))], seed=6)
    flux = spectral_flux(out.wave[0])
    seams = [(start + 1) * 16000 // 256 for start in out.windows[0][1:]]  # new sound starts 1 s into a window
    near = np.zeros(len(flux), bool)
    for seam in seams:
        near[seam - 8 : seam + 4] = True
    assert len(seams) == 3 and flux[near].max() <= flux[~near].max()


def test_a_rectified_flow_checkpoint_generates_with_euler_only(tmp_path):
    from tests.fixtures.checkpoint import make_checkpoint, tiny_model_config
    from uniform_cli.config import CodecConfig, DataConfig, DiffusionConfig, GenerateConfig
    from uniform_cli.generate.pipeline import UniFormPipeline

    codec = CodecConfig(video="pixel", audio="mel", video_vae="pixel", audio_vae="mel", text_encoder="hash:16")
    folder = make_checkpoint(tmp_path / "flow", codec,
                             model=tiny_model_config(video_latent=(24, 20, 4, 4), audio_latent=(16, 100, 4)),
                             data=DataConfig(fps=17, size=32, seconds=4.0, sample_rate=16000),
                             generate=GenerateConfig(sampler="euler", steps=3),
                             diffusion=DiffusionConfig(objective="rflow"))
    pipe = UniFormPipeline.from_pretrained(folder, device="cpu")
    video = steady_scene(4.0)
    out = pipe.generate([Job("waves", "v2a", video=video)], seed=0)
    assert np.array_equal(out.frames[0], video) and out.wave[0].shape == (64000,) and np.isfinite(out.wave[0]).all()
    with pytest.raises(PipelineError, match='use sampler "euler"'):
        pipe.generate([Job("waves", "v2a", video=video)], sampler="dpm++")
