"""`uniform eval`: the paper's metrics on a folder of generated clips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    generated_dir: Path = typer.Argument(..., help="Folder of generated {id}.mp4 / {id}.wav files."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="Folder of real clips (same stems for paired KL); needed by fad, fd, kl, fvd, kvd."
    ),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="Comma-separated subset of av-align,fad,fd,kl,is,fvd,kvd. Default: all whose folders and weights are given.",
    ),
    weights_dir: Optional[Path] = typer.Option(
        None,
        "--weights-dir",
        help="Folder with vggish-10086976.pth (fad), Cnn14_16k_mAP=0.438.pth (fd, kl, is), rgb_imagenet.pt (fvd, kvd).",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="torch device; default cuda when available."),
) -> None:
    """Measure generated clips: AV-Align, FAD, FD, KL, IS, FVD, KVD; writes GENERATED_DIR/metrics.json.

    \b
    Example: uniform eval outputs/ --reference data/vggsound/clips --weights-dir weights/
    """
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from uniform_cli.eval.metrics import MetricError
    from uniform_cli.eval.run import METRICS, EvalError, evaluate, parse_metrics, write_metrics
    from uniform_cli.eval.weights import WeightsError
    from uniform_cli.media.io import MediaError

    console = Console(stderr=True)
    try:
        names = parse_metrics(metrics) if metrics is not None else None
    except EvalError as e:  # unknown metric names
        fail(e, USAGE)
    try:
        result = evaluate(
            generated_dir,
            reference,
            names,
            weights_dir,
            device,
            progress=lambda items, description: track(items, description=description, console=console),
        )
    except (EvalError, WeightsError, MediaError, MetricError) as e:
        fail(e)

    out = generated_dir / "metrics.json"
    write_metrics(out, result)
    table = Table(title=f"{generated_dir} ({result.details['num_generated']} clips)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    for name in result.details["metrics"]:  # type: ignore[union-attr]
        key = name.replace("-", "_")
        spread = result.values.get(f"{key}_std")
        value = f"{result.values[key]:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")
        table.add_row(name, value, METRICS[name].description)
        if name == "kl":
            table.add_row("kl (sigmoid)", f"{result.values['kl_sigmoid']:.4f}", "the same with per-class sigmoids")
    Console().print(table)
    for note in result.details["skipped"]:  # type: ignore[union-attr]
        console.print(f"skipped {note}")
    console.print(f"wrote {out}")
