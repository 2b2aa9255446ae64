import numpy as np
import pytest
import scipy.linalg
import torch

from uniform_cli.eval.metrics import (
    MetricError,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    kernel_distance,
    kl_divergence,
    mmd2_unbiased,
)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 16))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert abs(frechet_distance(torch.from_numpy(x), x)) < 1e-6


def test_frechet_distance_closed_form_for_gaussians():
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 2.0)
    s1, s2 = np.eye(d), 4 * np.eye(d)
    # ||mu1-mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) = 16 + (4 + 16 - 2*8) = 20
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(20.0)


def test_frechet_distance_grows_with_a_mean_shift():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8))
    distances = [frechet_distance(x, y + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances)
    # The shift moves the mean by sqrt(8) * shift: expected 8 * shift^2 plus sampling noise.
    assert distances[3] == pytest.approx(32.0, rel=0.05)
    assert distances[0] < 0.05


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((60, 12)), rng.standard_normal((80, 12)) @ rng.standard_normal((12, 12)) + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(axis=0) - b.mean(axis=0)
    expected = diff @ diff + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_with_fewer_samples_than_dimensions():
    # Singular covariances: the sample-space route must agree with the covariance route.
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 20)), rng.standard_normal((7, 20)) * 2 + 1
    from_stats = frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(from_stats, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_mmd_is_near_zero_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((400, 10)), rng.standard_normal((400, 10))
    same = mmd2_unbiased(x, y)
    assert abs(same) < 0.02
    assert mmd2_unbiased(x, y + 1.0) > 20 * abs(same)
    mean, std = kernel_distance(x, y + 1.0, subsets=5, subset_size=100)
    assert mean > 0.1 and std >= 0


def test_mmd_unbiased_has_zero_mean_over_repeats():
    # The biased estimator would be positive on average; the unbiased one averages out to ~0.
    rng = np.random.default_rng(4)
    values = [mmd2_unbiased(rng.standard_normal((20, 3)), rng.standard_normal((20, 3))) for _ in range(300)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_inception_score_bounds():
    assert inception_score(np.zeros((12, 7)))[0] == pytest.approx(1.0)
    confident = np.eye(7) * 100.0
    assert inception_score(confident)[0] == pytest.approx(7.0, rel=1e-6)
    mean, std = inception_score(np.tile(confident, (2, 1)), splits=2)
    assert mean == pytest.approx(7.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)


def test_kl_is_zero_for_identical_and_positive_for_different_distributions():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 527)), rng.standard_normal((8, 527)) * 3
    # Identical inputs give -C * 1e-6 at most, from the 1e-6 added to the generated probabilities.
    assert abs(kl_divergence(a, a)) < 527e-6
    assert kl_divergence(a, b) > 0.1
    # Direction: KL(p_ref || p_gen) sums over the reference distribution.
    p = np.array([[0.0, 10.0]])
    q = np.array([[0.0, 0.0]])
    p_soft = np.exp(p) / np.exp(p).sum()
    expected = float((p_soft * (np.log(p_soft) - np.log(0.5 + 1e-6))).sum())
    assert kl_divergence(p, q) == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(a, b, "sigmoid") > 0


def test_metric_errors_are_clear():
    with pytest.raises(MetricError, match="widths differ"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(MetricError, match="paired"):
        kl_divergence(np.zeros((3, 5)), np.zeros((4, 5)))
    with pytest.raises(MetricError, match="2-D"):
        inception_score(np.zeros(5))
