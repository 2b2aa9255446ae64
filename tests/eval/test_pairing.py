"""The shuffled-pair baseline and the permutation test, against brute-force enumeration."""

import itertools

import numpy as np
import pytest

from uniform_cli.eval.pairing import baseline, pair_scores, pairing_p_value, shuffled_pairs, true_pairs


def exact_p_value(scores: np.ndarray) -> float:
    """Every derangement of the sounds, enumerated: the share whose mean reaches the true pairs' mean."""
    n = len(scores)
    truth = np.trace(scores) / n
    means = [np.mean([scores[i, p[i]] for i in range(n)])
             for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n))]
    return sum(m >= truth - 1e-12 for m in means) / len(means)


def test_p_value_matches_the_enumeration_of_every_derangement():
    rng = np.random.default_rng(3)
    for n in (3, 4, 5, 6):
        scores = rng.random((n, n)) + 0.1 * np.eye(n)
        exact = exact_p_value(scores)
        assert 0.0 < exact < 1.0  # a case where the estimate has something to get right
        assert pairing_p_value(scores, draws=20000) == pytest.approx(exact, abs=0.015), n


def test_p_value_extremes_and_direction():
    assert pairing_p_value(np.eye(5)) == 0.0  # only the true pairs align
    assert pairing_p_value(np.full((5, 5), 0.3)) == 1.0  # every pairing scores the same
    # picture 0 goes with every sound: the true pairs are no better than any re-pairing
    scores = np.zeros((4, 4))
    scores[0] = 1.0
    assert pairing_p_value(scores) == 1.0
    # three clips have two derangements: sounds (1, 2, 0) score 1/3, above the true pairs' 1/6; (2, 0, 1) score 0
    half = np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert pairing_p_value(half, draws=400) == pytest.approx(0.5, abs=0.1)
    # Lower is better (a misalignment in seconds): the true pairs' zeros beat every re-pairing.
    assert pairing_p_value(1.0 - np.eye(5), higher_is_better=False) == 0.0
    assert pairing_p_value(1.0 - np.eye(5)) == 1.0
    assert np.isnan(pairing_p_value(np.ones((1, 1))))


def test_true_and_shuffled_pairs_split_the_matrix():
    scores = np.arange(9.0).reshape(3, 3)
    assert true_pairs(scores).tolist() == [0.0, 4.0, 8.0]
    assert sorted(shuffled_pairs(scores).tolist()) == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    b = baseline(scores)
    assert (b.true, b.shuffled, b.clips) == (4.0, 4.0, 3)
    assert np.isnan(baseline(np.ones((1, 1))).shuffled)
    with pytest.raises(ValueError, match="square"):
        baseline(np.ones((2, 3)))


def test_pair_scores_average_the_windows_both_clips_have():
    # A clip is a list of windows; here a window's "picture" and "sound" are numbers and pair() multiplies them.
    pair = lambda own, other: own["v"] * other["a"]  # noqa: E731
    clips = [[{"v": 1, "a": 2}, {"v": 3, "a": 4}], [{"v": 5, "a": 6}]]
    scores = pair_scores(pair, clips)
    assert scores.tolist() == [[(1 * 2 + 3 * 4) / 2, 1 * 6], [5 * 2, 5 * 6]]
