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


# -- diffusers' names ---------------------------------------------------------------------------------------------


def generators(*seeds: int) -> list:
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds]


def assert_same(a, b) -> None:
    assert len(a.frames) == len(b.frames)
    for x, y in zip(a.frames + a.wave, b.frames + b.wave):
        np.testing.assert_array_equal(x, y)


def test_the_diffusers_call_is_todays_call(light_pipe):
    texts = ["a ball bounces", "a lamp beeps"]
    today = light_pipe(texts, "t2av", sampler="ddpm", steps=2, cfg_video=2.5, cfg_audio=2.5,
                       generator=generators(1, 2))
    out = light_pipe(prompt=texts, sampler="ddpm", num_inference_steps=2, guidance_scale=2.5,
                     generator=generators(1, 2))
    assert_same(today, out)
    assert out[0] is out.frames and out[1] is out.wave
    assert_same(today, light_pipe(texts=texts, sampler="ddpm", steps=2, cfg_video=2.5, cfg_audio=2.5,
                                  generator=generators(1, 2)))

    # guidance per modality; num_videos_per_prompt: each prompt's outputs side by side, seeds over all outputs
    many = light_pipe(prompt=texts, num_inference_steps=2, guidance_scale={"video": 2.0, "audio": 3.0},
                      num_videos_per_prompt=2, seed=7)
    assert_same(light_pipe([texts[0]] * 2 + [texts[1]] * 2, steps=2, cfg_video=2.0, cfg_audio=3.0, seed=7), many)
    assert many.seeds == [7, 8, 9, 10] and not np.array_equal(many.frames[0], many.frames[1])

    import torch

    one = light_pipe(prompt=texts, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert_same(one, light_pipe(prompt=texts, num_inference_steps=2, generator=torch.Generator().manual_seed(3)))
    assert not np.array_equal(one.frames[0], one.frames[1])  # the rows draw in turn from the one generator


def test_output_types(light_pipe):
    import torch

    arrays = light_pipe(prompt="a ball bounces", num_inference_steps=2, seed=1)
    tensors = light_pipe(prompt="a ball bounces", num_inference_steps=2, seed=1, output_type="pt")
    assert isinstance(tensors.frames[0], torch.Tensor) and tensors.frames[0].dtype == torch.uint8
    np.testing.assert_array_equal(tensors.frames[0].numpy(), arrays.frames[0])
    np.testing.assert_array_equal(tensors.wave[0].numpy(), arrays.wave[0])
    images = light_pipe(prompt="a ball bounces", num_inference_steps=2, seed=1, output_type="pil")
    assert len(images.frames[0]) == 68 and images.frames[0][0].size == (32, 32)
    np.testing.assert_array_equal(np.stack([np.asarray(i) for i in images.frames[0]]), arrays.frames[0])
    frames, wave = light_pipe(prompt="a ball bounces", num_inference_steps=2, seed=1, return_dict=False)
    np.testing.assert_array_equal(frames[0], arrays.frames[0])
    with pytest.raises(PipelineError, match="output_type must be one of np, pt, pil"):
        light_pipe(prompt="x", output_type="latent")


def test_negative_prompt_replaces_the_null_caption(light_pipe):
    texts = ["a ball bounces", "a lamp beeps"]
    plain = light_pipe(prompt=texts, num_inference_steps=2, seed=4)
    assert_same(plain, light_pipe(prompt=texts, num_inference_steps=2, seed=4, negative_prompt=""))
    negative = light_pipe(prompt=texts, num_inference_steps=2, seed=4, negative_prompt=["a whistle", ""])
    # guided away from "a whistle" (a random model: a small change, but in both modalities)
    assert not np.array_equal(negative.frames[0], plain.frames[0])
    assert not np.array_equal(negative.wave[0], plain.wave[0])
    np.testing.assert_array_equal(negative.frames[1], plain.frames[1])  # its own negative is the null caption
    unguided = light_pipe(prompt=texts, num_inference_steps=2, seed=4, guidance_scale=1.0, negative_prompt="x")
    assert_same(unguided, light_pipe(prompt=texts, num_inference_steps=2, seed=4, guidance_scale=1.0))


def test_callback_on_step_end_sees_every_step(light_pipe):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append((pipe, step, int(timestep), kwargs["latents"]))
        return kwargs

    out = light_pipe(prompt=["a ball bounces"], num_inference_steps=3, seed=2, sampler="ddim",
                     callback_on_step_end=callback)
    assert [s[1] for s in seen] == [0, 1, 2] and all(s[0] is light_pipe for s in seen)
    assert seen[0][2] > seen[1][2] > seen[2][2] == 0  # from the noisiest step to t = 0
    final = seen[-1][3]  # the last step's latents are what was decoded
    np.testing.assert_array_equal(light_pipe.video_codec.decode(final.video, 68).numpy(), out.frames[0][None])
    assert_same(out, light_pipe(prompt=["a ball bounces"], num_inference_steps=3, seed=2, sampler="ddim"))

    def replaces(pipe, step, timestep, kwargs):
        return {"latents": kwargs["latents"].map(lambda x: x * 0)}

    with pytest.raises(PipelineError, match="returned new latents"):
        light_pipe(prompt="x", num_inference_steps=2, callback_on_step_end=replaces)


def test_given_media_may_be_file_paths(light_pipe, media):
    import dataclasses

    from uniform_cli.media.prepare import probe

    spec = dataclasses.replace(light_pipe.spec, seconds=probe(media["video"]).duration)
    frames = prepare_media(media["video"], spec, audio=False, allow_short=True).video
    by_path = light_pipe(prompt="", task="v2a", video=str(media["video"]), num_inference_steps=2, seed=1)
    assert_same(light_pipe([""], "v2a", video=[frames], steps=2, seed=1), by_path)
    assert len(by_path.wave[0]) == 5 * 16000  # the whole 5 s file
    with pytest.raises(PipelineError, match="video file .*missing.mp4"):
        light_pipe(prompt="", task="v2a", video="missing.mp4")


def test_cpu_offload_and_to_give_the_same_clips(light_pipe, light_checkpoint):
    from uniform_cli.generate.pipeline import part_modules

    offloaded = UniFormPipeline.from_pretrained(light_checkpoint, device="cpu").enable_model_cpu_offload("cpu")
    assert offloaded.offload and offloaded.device.type == "cpu"
    kwargs = dict(prompt=["a ball bounces", "a lamp beeps"], num_inference_steps=2, seed=3)
    assert_same(light_pipe(**kwargs), offloaded(**kwargs))
    assert offloaded.to("cpu") is offloaded and not offloaded.offload
    assert [type(m).__name__ for m in part_modules(offloaded.text_encoder)] == ["HashEmbedding"]
    assert part_modules(offloaded.video_codec) == []  # weight-free


def test_conflicting_names_are_refused(light_pipe):
    with pytest.raises(PipelineError, match="num_inference_steps or steps"):
        light_pipe(prompt="x", num_inference_steps=2, steps=3)
    with pytest.raises(PipelineError, match="guidance_scale or cfg_video/cfg_audio"):
        light_pipe(prompt="x", guidance_scale=2.0, cfg_audio=3.0)
    with pytest.raises(PipelineError, match="per modality"):
        light_pipe(prompt="x", guidance_scale={"video": 2.0})
    with pytest.raises(PipelineError, match="prompt or texts"):
        light_pipe(prompt="x", texts=["y"])
    with pytest.raises(PipelineError, match="2 negative_prompt.*|negative_prompt has 2 rows"):
        light_pipe(prompt="x", negative_prompt=["a", "b"])
