"""Progress in a log: plain lines now and then, none on every step."""

import io

from rich.console import Console

from uniform_cli.progress import LogProgress


def test_without_a_terminal_progress_is_a_plain_line_now_and_then():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    progress = LogProgress(console, "train", 100, done=10, every=0.0, unit=" steps")
    progress.update(20, loss=0.123456)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train: 20/100 steps (20%), loss 0.1235, about ") and lines[0].endswith("min left")
    quiet = LogProgress(console, "train", 100, every=3600.0)
    for step in range(1, 100):
        quiet.update(step)  # within the interval: nothing
    quiet.update(100)  # the end is always said
    assert out.getvalue().splitlines()[1:] == ["train: 100/100 (100%)"]
