"""The shuffled-pair baseline and permutation test of a paired measure (AV-Align, CLAP, ...).

A paired measure scores one clip's picture (or caption) against its own sound. On its own the number says
little: grainy video has motion peaks everywhere, and any sound then hits some of them. The baseline asks
what the same measure gives when the pairing is broken. From a score matrix `N N` (row i: the picture or
caption of clip i, column j: the sound of clip j):
    true pairs      the diagonal, every clip with its own sound;
    shuffled pairs  every off-diagonal entry, sound and picture that have nothing to do with each other;
    p-value         the share of random re-pairings (derangements: no clip keeps its own sound) whose mean
                    reaches the true pairs' mean. Small values are evidence of sync; about a half means none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DRAWS = 2000
"""Random re-pairings per p-value: its resolution is 1 / DRAWS."""
SEED = 0


def pair_scores(pair: Callable[[dict, dict], float], clips: Sequence[Sequence[dict]]) -> np.ndarray:
    """The `N N` score matrix of a paired measure over clips given as per-window features: entry (i, j) is
    `pair(window k of clip i, window k of clip j)` (clip i's picture or caption, clip j's sound) averaged over
    the windows both clips have, so that the diagonal is each clip's own score."""
    return np.array([[np.mean([pair(own[k], other[k]) for k in range(min(len(own), len(other)))])
                      for other in clips] for own in clips])


def true_pairs(scores: np.ndarray) -> np.ndarray:
    """Every clip with its own sound, `N`: the diagonal of an `N N` score matrix."""
    return np.diag(np.asarray(scores)).copy()


def shuffled_pairs(scores: np.ndarray) -> np.ndarray:
    """Every mismatched pair (picture of clip i, sound of clip j != i), `N (N - 1)`."""
    scores = np.asarray(scores)
    return scores[~np.eye(len(scores), dtype=bool)]


def pairing_p_value(scores: np.ndarray, draws: int = DRAWS, seed: int = SEED, higher_is_better: bool = True) -> float:
    """The share of `draws` random derangements of the sounds whose mean score does as well as the true pairs'
    (reaches it, or for a lower-is-better measure stays at or under it); NaN for fewer than 2 clips."""
    scores = np.asarray(scores, dtype=np.float64)
    if not higher_is_better:
        scores = -scores
    n = len(scores)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    rows, means = np.arange(n), []
    while len(means) < draws:
        sound = rng.permutation(n)
        if (sound != rows).all():  # a derangement: about 1 in e permutations, so rejection is cheap
            means.append(scores[rows, sound].mean())
    return float(np.mean(np.array(means) >= np.diag(scores).mean() - 1e-12))


@dataclass(frozen=True)
class Baseline:
    """A paired measure on a set of clips beside its shuffled pairs."""

    true: float
    """Mean over the clips' own pairs (the metric's value)."""
    shuffled: float
    """Mean over every mismatched pair (NaN for one clip)."""
    p_value: float
    """Share of random re-pairings that do as well (NaN for one clip)."""
    clips: int


def baseline(scores: np.ndarray, higher_is_better: bool = True, draws: int = DRAWS) -> Baseline:
    """True-pair mean, shuffled-pair mean and permutation p-value of an `N N` score matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or not len(scores):
        raise ValueError(f"a pairing baseline needs a square `N N` score matrix, got shape {scores.shape}")
    off = shuffled_pairs(scores)
    return Baseline(
        true=float(true_pairs(scores).mean()),
        shuffled=float(off.mean()) if off.size else float("nan"),
        p_value=pairing_p_value(scores, draws, higher_is_better=higher_is_better),
        clips=len(scores),
    )
