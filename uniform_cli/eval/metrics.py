"""Distribution metrics on extracted features: Fréchet distance, polynomial-kernel MMD, KL and Inception Score.

Features are `N D` arrays (numpy or torch; computed in float64). Conventions follow the AudioLDM evaluation
toolbox (haoheliu/audioldm_eval), which the audio papers in this line report with:
- Fréchet distance on feature sets (FAD on VGGish, FD on PANNs 2048-d, FVD on I3D logits);
- polynomial-kernel MMD, KID-style: k(x, y) = (x·y / D + 1)^3, unbiased estimator, averaged over random
  subsets (KVD on I3D logits; reported raw, no ×1000 scaling);
- KL between paired reference and generated class distributions: mean over pairs of
  sum_c p_ref(c) · (log p_ref(c) − log(p_gen(c) + 1e-6)), where p = softmax(logits) (`kl`, the toolbox's "KL")
  or p = sigmoid(logits) per class (`kl_sigmoid`, the toolbox's "KL_Sigmoid"; not a normalised distribution,
  kept only for comparison with numbers reported that way);
- Inception Score exp(E_x KL(p(y|x) || p(y))) with p = softmax(logits), averaged over splits.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

KL_EPS = 1e-6
"""Added to the generated probabilities before the log, as the AudioLDM toolbox does."""


class MetricError(ValueError):
    """Features that a metric cannot use (wrong rank, mismatched widths, too few samples)."""


def _as_2d(name: str, x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"{name} must be a 2-D `N D` feature array, got shape {x.shape}")
    return x


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean `D` and unbiased covariance `D D` of features `N D` (N >= 2)."""
    x = _as_2d("features", features)
    if len(x) < 2:
        raise MetricError(f"a covariance needs at least 2 feature vectors, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^½) for covariance matrices: the sum of sqrt of the eigenvalues of S1^½ S2 S1^½.

    Equal to Tr(scipy.linalg.sqrtm(S1 @ S2)) (S1 S2 is similar to that symmetric PSD matrix), but computed
    with two symmetric eigendecompositions: seconds instead of minutes at 2048-d, real-valued by construction,
    and defined for singular covariances without the eps fallback sqrtm needs.
    """
    import scipy.linalg

    values, vectors = scipy.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    eigenvalues = scipy.linalg.eigvalsh((middle + middle.T) / 2)
    # Round-off leaves tiny negative eigenvalues on singular covariances; they are zeros.
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise MetricError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets `N D` and `M D` (N, M >= 2)."""
    a, b = _as_2d("features1", features1), _as_2d("features2", features2)
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if max(len(a), len(b)) >= a.shape[1]:
        return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
    if min(len(a), len(b)) < 2:
        raise MetricError(f"a covariance needs at least 2 feature vectors, got {len(a)} and {len(b)}")
    # Fewer samples than dimensions: the same value from sample space. With A = centred X / sqrt(N - 1),
    # S = A^T A, and the non-zero eigenvalues of S1 S2 are the squared singular values of A1 A2^T.
    a_c = (a - a.mean(axis=0)) / np.sqrt(len(a) - 1)
    b_c = (b - b.mean(axis=0)) / np.sqrt(len(b) - 1)
    diff = a.mean(axis=0) - b.mean(axis=0)
    cross = np.linalg.svd(a_c @ b_c.T, compute_uv=False).sum()
    return float(diff @ diff + (a_c**2).sum() + (b_c**2).sum() - 2 * cross)


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """(x·y / D + coef0)^degree for all pairs of rows: `N D`, `M D` -> `N M` (gamma = 1/D)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x, y, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased squared MMD with the polynomial kernel between samples `N D` and `M D` (N, M >= 2)."""
    x, y = _as_2d("x", x), _as_2d("y", y)
    if x.shape[1] != y.shape[1]:
        raise MetricError(f"feature widths differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise MetricError(f"unbiased MMD needs at least 2 samples on each side, got {m} and {n}")
    k_xx, k_yy = polynomial_kernel(x, x, degree, coef0), polynomial_kernel(y, y, degree, coef0)
    k_xy = polynomial_kernel(x, y, degree, coef0)
    # Diagonal terms k(x_i, x_i) are what makes the plain estimator biased; leave them out.
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kernel_distance(
    features1, features2, subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float]:
    """KID/KVD: mean and std of `mmd2_unbiased` over random equal-size subsets (size capped by the sets)."""
    a, b = _as_2d("features1", features1), _as_2d("features2", features2)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise MetricError(f"kernel distance needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _probabilities(logits: np.ndarray, kind: Literal["softmax", "sigmoid"]) -> np.ndarray:
    if kind == "softmax":
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    raise MetricError(f"unknown probability kind {kind!r}; use 'softmax' or 'sigmoid'")


def kl_divergence(
    reference_logits, generated_logits, kind: Literal["softmax", "sigmoid"] = "softmax"
) -> float:
    """Mean over pairs of KL(p_reference || p_generated) from paired class logits `N C` (row i with row i)."""
    ref, gen = _as_2d("reference_logits", reference_logits), _as_2d("generated_logits", generated_logits)
    if ref.shape != gen.shape:
        raise MetricError(f"KL needs paired logits of the same shape, got {ref.shape} and {gen.shape}")
    p, q = _probabilities(ref, kind), _probabilities(gen, kind)
    # p log p with p = 0 contributes 0 (torch.kl_div's convention).
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q + KL_EPS)), 0.0)
    return float(terms.sum() / len(ref))


def inception_score(logits, splits: int = 1) -> tuple[float, float]:
    """Mean and std over `splits` of exp(E_x KL(softmax(logits_x) || mean_x softmax(logits_x)))."""
    x = _as_2d("logits", logits)
    if not 1 <= splits <= len(x):
        raise MetricError(f"splits must be between 1 and the number of samples {len(x)}, got {splits}")
    log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(np.arange(len(x)), splits):
        p = np.exp(log_p[part])
        log_marginal = np.log(p.mean(axis=0, keepdims=True))
        # p log(p / marginal) with p = 0 contributes 0.
        terms = np.where(p > 0, p * (log_p[part] - log_marginal), 0.0)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))
