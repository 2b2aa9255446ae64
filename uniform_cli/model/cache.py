"""A training-free step cache for sampling: first-block caching (ParaAttention's FBCache; TeaCache is the
same idea with a rescaled distance) for the UniForm backbone.

Across the steps of one sampling loop, the output of most blocks changes slowly. At every step the first
(spatial, temporal) block pair runs; when its residual (output minus input) differs from the residual at the
step that last ran every block by less than `threshold` (mean absolute difference over mean absolute value),
the remaining pairs are skipped and their residual from that step is added instead.

The decision is one per forward, for the whole batch, as FBCache makes it: a guided batch holds the conditional
and the unconditional rows of every sample (`diffusion.guidance`), so both branches of a sample always come
from the same step and guidance never mixes a fresh prediction with a stale one; per-row decisions would also
split the batch into ragged forwards, which costs more than it saves at these batch sizes.
"""

from __future__ import annotations

import torch

from uniform_cli.model.uniform import UniForm
from uniform_cli.types import AV


def relative_change(current: torch.Tensor, reference: torch.Tensor) -> float:
    """mean |current - reference| / mean |reference| over all elements (FBCache's distance); inf for a zero
    reference, so that a step with nothing to compare with always runs in full."""
    scale = reference.float().abs().mean()
    if scale == 0:
        return float("inf")
    return float((current.float() - reference.float()).abs().mean() / scale)


class FirstBlockCache:
    """Calls `model` like `model(x, t, generated, text, text_mask, drop_text)`, skipping the blocks after the
    first pair on steps whose first-pair residual changed by less than `threshold` since the last full step.

    Make one for each sampling loop (its state belongs to one trajectory). `threshold = 0` never skips and
    gives exactly the model's outputs. `calls` and `skipped` count forwards and skipped ones."""

    def __init__(self, model: UniForm, threshold: float):
        if threshold < 0:
            raise ValueError(f"cache threshold {threshold} must be 0 (off) or positive")
        self.model = model
        self.threshold = threshold
        self.first_residual: torch.Tensor | None = None
        """The first pair's residual `B N D` at the last step that ran every block."""
        self.rest_residual: torch.Tensor | None = None
        """The remaining pairs' residual `B N D` at that step."""
        self.calls = 0
        self.skipped = 0

    def __call__(self, x: AV, t: torch.Tensor, generated: AV, text: torch.Tensor, text_mask: torch.Tensor,
                 drop_text: torch.Tensor | None = None) -> AV:
        model = self.model
        h, cond = model.embed(x, t, generated, text, text_mask, drop_text)
        first = model.run_blocks(h, cond, 0, 1)
        residual = first - h
        self.calls += 1
        if (self.first_residual is not None and self.first_residual.shape == residual.shape
                and relative_change(residual, self.first_residual) < self.threshold):
            self.skipped += 1
            return model.head(first + self.rest_residual, cond)
        out = model.run_blocks(first, cond, 1)
        self.first_residual, self.rest_residual = residual, out - first
        return model.head(out, cond)
