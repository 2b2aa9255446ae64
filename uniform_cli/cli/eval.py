"""`uniform eval`: the paper's metrics on a folder of generated clips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail


def main(
    generated_dir: Path = typer.Argument(..., help="Folder of generated {id}.mp4 / {id}.wav files (and results.jsonl)."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="Folder of real clips (same stems for paired KL); needed by fad, fd, kl, fvd, kvd."
    ),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="Comma-separated subset of av-align,clap,ib,fad,fd,kl,is,fvd,fvd-styleganv,kvd-styleganv,desync,kvd. "
        "Default: all whose folders and weights are given.",
    ),
    weights_dir: Optional[Path] = typer.Option(
        None,
        "--weights-dir",
        help="Folder with vggish-10086976.pth (fad), Cnn14_16k_mAP=0.438.pth (fd, kl, is), rgb_imagenet.pt (fvd, kvd), "
        "i3d_torchscript.pt (fvd-styleganv, kvd-styleganv), synchformer_state_dict.pth (desync), imagebind_huge.pth (ib).",
    ),
    clap: Optional[str] = typer.Option(
        None, "--clap", help="CLAP folder (Hugging Face layout) or hub id in the local cache; default "
        "laion/larger_clap_music_and_speech."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="torch device; default cuda when available."),
) -> None:
    """Measure generated clips overall and per task (from results.jsonl): AV-Align, CLAP and ImageBind score
    beside their shuffled pairs, DeSync, FD-VGG (FAD), FD-PANN, KL, IS, FVD and KVD (pytorch-i3d's and
    StyleGAN-V's I3D); writes GENERATED_DIR/metrics.json.

    \b
    Example: uniform eval outputs/ --reference data/vggsound/clips --weights-dir weights/
    """
    from rich.console import Console
    from rich.progress import track

    from uniform_cli.eval.metrics import MetricError
    from uniform_cli.eval.run import EvalError, evaluate, parse_metrics, write_metrics
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
            clap=clap,
        )
    except (EvalError, WeightsError, MediaError, MetricError) as e:
        fail(e)

    out = generated_dir / "metrics.json"
    write_metrics(out, result)
    _print(result, generated_dir)
    for note in result.details["skipped"] + result.details["notes"]:
        console.print(f"skipped {note}", markup=False)
    console.print(f"wrote {out}")


def _print(result, generated_dir: Path) -> None:
    """The values overall and per task, each with its clip count, then the paired metrics' baselines."""
    from rich.console import Console
    from rich.table import Table

    from uniform_cli.eval.run import METRICS

    d = result.details
    groups = [("all", result.values, d["clips"])] + [(t, v["values"], v["clips"]) for t, v in d["per_task"].items()]
    table = Table(title=f"{generated_dir} ({d['num_generated']} clips)")
    table.add_column("metric")
    for group, _, _ in groups:
        table.add_column(f"{group} (clips)", justify="right")
    table.add_column("meaning")
    for name in d["metrics"]:
        for i, key in enumerate(METRICS[name].keys):
            cells = [f"{v[key]:.4f} ({n[key]})" if key in v else "-" for _, v, n in groups]
            table.add_row(key, *cells, METRICS[name].description if i == 0 else "")
    Console().print(table)
    if d["baselines"]:
        pairs = Table(title="paired metrics beside the same clips' shuffled pairs")
        for column in ("metric", "clips", "true pairs", "shuffled pairs", "re-paired as good (p)", "n"):
            pairs.add_column(column, justify="left" if column in ("metric", "clips") else "right")
        for key, by_group in d["baselines"].items():
            for group, b in by_group.items():
                pairs.add_row(key, group, f"{b['true']:.4f}", f"{b['shuffled']:.4f}", f"{b['p_value']:.3f}",
                              str(b["clips"]))
        Console().print(pairs)
