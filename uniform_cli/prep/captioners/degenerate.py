"""Degenerate captions: outputs a captioner produced that must not be kept as a caption.

Three failure shapes are common with video LLMs (and certain with random weights):
- `empty`: nothing but whitespace or punctuation;
- `repeated`: one phrase looping (`the dog barks the dog barks the dog barks ...`);
- `echoed`: the prompt (or a piece of it, such as one of its example captions) copied back.
"""

from __future__ import annotations

import re

EMPTY = "empty"
REPEATED = "repeated"
ECHOED = "echoed"
DEGENERATE = (EMPTY, REPEATED, ECHOED)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_TAG = re.compile(r"<[^<>\s]*>")


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits); punctuation and special tokens such as `<image>` dropped."""
    return _WORD.findall(_TAG.sub(" ", text).lower())


def repeated_coverage(seq: list[str], max_period: int = 16, min_repeats: int = 3) -> int:
    """Length of the longest stretch of `seq` made of one unit of <= `max_period` items said >= `min_repeats` times.

    A stretch is periodic with period p when seq[i] == seq[i + p] along it; its length is the run of such
    matches plus p. Only stretches that hold the unit at least `min_repeats` times count.
    """
    best = 0
    n = len(seq)
    for p in range(1, min(max_period, n // min_repeats) + 1):
        run = 0
        for i in range(n - p):
            run = run + 1 if seq[i] == seq[i + p] else 0
            if run + p >= min_repeats * p:
                best = max(best, run + p)
    return best


def is_repeated(text: str, share: float = 0.5) -> bool:
    """At least `share` of the caption is one phrase said three times or more in a row."""
    tokens = words(text)
    if len(tokens) < 3:
        # A run-on "word" (`hahahahaha`, `!!!!!!`) loops in characters instead.
        chars = [c for c in text if not c.isspace()]
        return len(chars) >= 6 and repeated_coverage(chars, max_period=8) >= share * len(chars)
    return repeated_coverage(tokens) >= share * len(tokens)


def is_echoed(text: str, prompt: str, share: float = 0.5, n: int = 8) -> bool:
    """At least `share` of the caption's word n-grams (n <= 8) also occur in the prompt.

    Captions under three words are not judged (too short to tell a copy from a coincidence).
    """
    out, src = words(text), words(prompt)
    if len(out) < 3:
        return False
    n = min(n, len(out))
    grams = [tuple(out[i : i + n]) for i in range(len(out) - n + 1)]
    known = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    return sum(g in known for g in grams) >= share * len(grams)


def degenerate_status(text: str, prompt: str) -> tuple[str, str] | None:
    """`(status, message)` for a degenerate caption, or None for a usable one."""
    if not words(text):
        return EMPTY, "the captioner returned no words"
    if is_repeated(text):
        return REPEATED, "the caption is mostly one phrase repeated"
    if is_echoed(text, prompt):
        return ECHOED, "the caption copies the prompt"
    return None
