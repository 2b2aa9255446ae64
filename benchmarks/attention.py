"""Attention kernels at UniForm's shapes: each SDPA backend, head width 72 as is or zero-padded to 80/96/128
(flash kernels are built for a few head widths; FA3 pads 72 to 96 itself). Prints one JSON object.

    python benchmarks/attention.py --preset debug          # CPU: the exactness check, math backend only
    python benchmarks/attention.py --preset XL/2           # one GPU: every backend, every width

Shapes are those of one training micro-batch: spatial attention over the S tokens of each of the B x F
frames, temporal attention over the F frames at each of the B x S positions, 16 heads of 72 for XL/2, bf16 on
CUDA. Each (kind, backend, width) reports forward + backward milliseconds (median), or why it did not run (a
backend that does not support the shape raises; that is a result too). Padding is exact: zeros added to q and
k leave every score unchanged, zeros added to v give output channels that are cut off, and the scale stays
1/sqrt(72); `padded_attention` is checked against the unpadded product before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from uniform_cli.config import PRESETS
from uniform_cli.model.packing import AudibleFrameLayout

BACKENDS = ("math", "efficient", "flash", "cudnn")
"""Names for torch.nn.attention.SDPBackend members."""


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int) -> torch.Tensor:
    """`F.scaled_dot_product_attention` of `B H L D` tensors computed at head width `width` >= D by zero
    padding, with the softmax scale of D; returns `B H L D`."""
    d = q.shape[-1]
    if width < d:
        raise ValueError(f"cannot pad head width {d} down to {width}")
    if width == d:
        return F.scaled_dot_product_attention(q, k, v)
    pad = (0, width - d)
    out = F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), scale=1 / math.sqrt(d))
    return out[..., :d]


def check_padding(widths: list[int], head_dim: int, device: torch.device) -> dict[int, float]:
    """Largest difference of padded against unpadded attention (fp32, math backend) per width; raises when
    one is not exact to fp32 rounding, so a wrong padding is never timed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, head_dim, generator=g).to(device) for _ in range(3))
    errors = {}
    with sdpa_kernel(SDPBackend.MATH):
        reference = F.scaled_dot_product_attention(q, k, v)
        for width in widths:
            errors[width] = float((padded_attention(q, k, v, width) - reference).abs().max())
    if any(e > 1e-5 for e in errors.values()):
        raise AssertionError(f"padded attention differs from unpadded: {errors}")
    return errors


def attention_shapes(preset: str, batch: int) -> dict[str, tuple[int, int, int, int]]:
    """(sequences, heads, length, head width) of spatial and temporal self-attention for one micro-batch."""
    cfg = PRESETS[preset]
    frames, rows, cols = AudibleFrameLayout.from_config(cfg).grid
    s = rows * cols
    d = cfg.hidden_size // cfg.num_heads
    return {"spatial": (batch * frames, cfg.num_heads, s, d), "temporal": (batch * s, cfg.num_heads, frames, d)}


def time_attention(shape: tuple[int, int, int, int], width: int, backend: str, device: torch.device,
                   dtype: torch.dtype, steps: int = 10, warmup: int = 3) -> dict:
    """Median forward + backward milliseconds of `padded_attention` under one SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        padded_attention(q, k, v, width).sum().backward()

    try:
        with sdpa_kernel(kind):
            for _ in range(warmup):
                step()
            sync()
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - start)
    except RuntimeError as e:  # the backend does not take this shape, dtype or device
        return {"error": str(e).splitlines()[0][:200]}
    return {"ms": round(1000 * sorted(times)[len(times) // 2], 3)}


def measure(preset: str, batch: int, device: torch.device, widths: list[int] | None = None) -> dict:
    """Every (kind, backend, width) at the preset's shapes; the math backend alone off CUDA."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = attention_shapes(preset, batch)
    head_dim = next(iter(shapes.values()))[3]
    widths = widths or sorted({head_dim, *(w for w in (80, 96, 128) if w >= head_dim)})
    result = {"preset": preset, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
              "padding_max_error": check_padding(widths, head_dim, device), "shapes": shapes, "ms": {}}
    for kind, shape in shapes.items():
        for backend in BACKENDS if cuda else ("math",):
            for width in widths:
                result["ms"][f"{kind}/{backend}/{width}"] = time_attention(shape, width, backend, device, dtype)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8, help="micro-batch the shapes are taken from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.batch, torch.device(args.device))))


if __name__ == "__main__":
    main()
