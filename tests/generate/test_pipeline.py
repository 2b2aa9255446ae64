"""`UniFormPipeline`: given media come back unchanged; a row's result does not depend on its batch."""

from __future__ import annotations

import numpy as np
import pytest

from uniform_cli.generate.pipeline import PipelineError, UniFormPipeline
from uniform_cli.generate.prompts import default_seed, plan, read_prompts
from uniform_cli.media.prepare import prepare_media
from uniform_cli.types import Task


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return UniFormPipeline.from_pretrained(checkpoint, device="cpu")


def test_given_media_survive_and_rows_are_independent(pipe, media):
    frames = prepare_media(media["video"], pipe.spec, audio=False).video
    wave = prepare_media(media["audio"], pipe.spec, video=False).audio
    out = pipe(["rain on a roof", "a dog barks"], [Task.V2A, Task.A2V], video=[frames, None], audio=[None, wave],
               sampler="ddpm", steps=2, seed=[5, 9])
    assert np.stack(out.frames).shape == (2, 68, 128, 128, 3) and out.frames[0].dtype == np.uint8
    assert np.stack(out.wave).shape == (2, 64000) and out.wave[0].dtype == np.float32
    np.testing.assert_array_equal(out.frames[0], frames)  # V2A: the prepared input frames themselves
    np.testing.assert_array_equal(out.wave[1], wave)  # A2V: the prepared input audio itself
    assert np.abs(out.wave[0]).max() > 0 and out.frames[1].std() > 0
    assert set(out.timings) == {"text", "encode", "denoise", "decode", "total"}

    # The A2V row in another batch, with its seed, gives the same clip: its noise (also the ancestral noise of DDPM)
    # comes from its own generator. On the CPU batched matmuls may round differently, hence the tolerance.
    again = pipe(["a dog barks"] * 2, Task.A2V, audio=[wave, wave], sampler="ddpm", steps=2, seed=[9, 10])
    assert np.abs(again.frames[0].astype(int) - out.frames[1]).max() <= 1
    assert np.abs(again.frames[1].astype(int) - out.frames[1]).mean() > 1  # another seed, another clip


def test_inputs_are_checked(pipe):
    with pytest.raises(PipelineError, match="v2a needs a video"):
        pipe(["x"], Task.V2A, steps=2)
    with pytest.raises(PipelineError, match="uint8"):
        pipe(["x"], Task.V2A, video=[np.zeros((10, 128, 128, 3), np.float32)], steps=2)
    with pytest.raises(PipelineError, match="uint8 F 128 128 3"):
        pipe(["x"], Task.V2A, video=[np.zeros((10, 64, 64, 3), np.uint8)], steps=2)
    with pytest.raises(PipelineError, match="audio must be float `S` at 16000 Hz"):
        pipe(["x"], Task.A2V, audio=[np.zeros((2, 16000), np.float32)], steps=2)
    with pytest.raises(PipelineError, match="2 tasks for 1 captions"):
        pipe(["x"], [Task.T2AV, Task.A2V], steps=2)


def test_rows_plan_seeds_and_samples(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("id,text,seed\na,one,3\nb,two,\n")
    rows = read_prompts(csv)
    items = plan(rows, num_samples=2, base_seed=100, source=csv)
    assert [(i.name, i.seed) for i in items] == [
        ("a_0", 3), ("a_1", 4), ("b_0", default_seed(100, "b")), ("b_1", default_seed(100, "b") + 1)
    ]
    assert default_seed(100, "b") != default_seed(100, "c")
