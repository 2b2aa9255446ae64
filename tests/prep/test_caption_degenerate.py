"""Degenerate-caption flags, frame sampling and clean-up: the small pure pieces of the caption stage."""

import numpy as np
import pytest

from uniform_cli.prep.caption import BatchedWork, CaptionJob
from uniform_cli.prep.captioners.contract import OPEN_SORA_SYSTEM, clean_caption
from uniform_cli.prep.captioners.degenerate import degenerate_status, is_echoed, is_repeated
from uniform_cli.prep.captioners.frames import clip_pixels, segment_centres
from uniform_cli.prep.captioners.pllava import pllava_prompt

PROMPT = pllava_prompt()
GOOD = "A brown dog runs across a grassy field while a man throws a red ball. Trees sway in the wind."


def test_good_caption_is_kept():
    assert degenerate_status(GOOD, PROMPT) is None


@pytest.mark.parametrize("text", ["", "   ", "...", " </s> ", "!!"])
def test_empty(text):
    assert degenerate_status(clean_caption(text), PROMPT)[0] == "empty"


@pytest.mark.parametrize(
    "text",
    [
        "the dog barks the dog barks the dog barks the dog barks",
        "A man plays guitar. " + "The crowd cheers. " * 6,
        "hahahahahahahahaha",
        "yes yes yes",
    ],
)
def test_repeated(text):
    assert is_repeated(text)
    assert degenerate_status(text, PROMPT)[0] == "repeated"


def test_repeated_needs_most_of_the_text():
    # A short echo inside a longer caption ("very very very") is not a loop.
    assert not is_repeated("It is very very very loud, and a train passes over the bridge behind the farm house.")


@pytest.mark.parametrize(
    "text",
    [
        "Describe the video in details.",
        "USER: Describe the video in details. ASSISTANT:",
        "Several giant wooly mammoths approach treading through a snowy meadow, their long wooly fur lightly blows",
    ],
)
def test_echoed(text):
    assert is_echoed(text, PROMPT)
    assert degenerate_status(text, PROMPT)[0] == "echoed"


def test_not_echoed_when_words_are_shared_but_not_phrases():
    assert not is_echoed("A woman walks her dog in the snow near a lighthouse.", OPEN_SORA_SYSTEM)


def test_clean_caption_keeps_answer_only():
    raw = "USER:<image> Describe the video in details. ASSISTANT: A cat sleeps.\nIt purrs.</s>"
    assert clean_caption(raw) == "A cat sleeps. It purrs."


def test_segment_centres():
    assert segment_centres(68, 4) == [8, 25, 42, 58]
    assert segment_centres(68, 1) == [33]
    assert segment_centres(3, 4) == [0, 0, 1, 2]
    with pytest.raises(ValueError):
        segment_centres(0, 4)


def test_clip_pixels_resizes_crops_and_normalises():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a white centre band survives the centre crop
    x = clip_pixels(frames, 28)
    assert x.shape == (2, 3, 28, 28)
    white = (1 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    assert np.allclose(x[0, :, 14, 14].numpy(), white, atol=1e-3)


class ScriptedCaptioner:
    """Returns fixed texts: a stand-in model so the driver's flagging is tested alone."""

    name = "labels"
    model = "scripted"
    num_frames = 0
    prompt = PROMPT

    def __init__(self, texts):
        self.texts = texts
        self.calls = 0

    def caption(self, inputs):
        self.calls += 1
        return [self.texts[i.key] for i in inputs]


def test_batched_work_flags_each_degenerate_kind_and_batches():
    texts = {"a": GOOD, "b": "", "c": "wind wind wind wind wind", "d": "Describe the video in details."}
    captioner = ScriptedCaptioner(texts)
    jobs = [CaptionJob(k, None, k) for k in texts]
    work = BatchedWork(jobs, captioner, batch_size=3)
    results = {job.key: work(job) for job in jobs}
    assert {k: r.status for k, r in results.items()} == {"a": "ok", "b": "empty", "c": "repeated", "d": "echoed"}
    assert results["c"].fields["text"] == "wind wind wind wind wind"  # kept for inspection, not as ok
    assert captioner.calls == 2  # 4 jobs in batches of 3
