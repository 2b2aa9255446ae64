"""Training curves of a run from its metrics.jsonl (`uniform plot runs/NAME`): loss overall and per job, gradient
norm and learning rate against the step, in one PNG drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uniform_cli.atomic import atomic_path, read_complete
from uniform_cli.diffusion.tasks import JOBS

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


class PlotError(ValueError):
    """Nothing to plot at the given path; the message says what to pass."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The step records of a metrics.jsonl in step order; a partial last line (a run killed while writing) and
    lines that are not records are left out."""
    records = []
    for line in read_complete(path).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that hold `key` (a job's loss is logged only at steps that drew the job)."""
    rows = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in rows], [v for _, v in rows]


def metrics_path(run: Path) -> Path:
    """A run folder's metrics.jsonl (or the file itself); PlotError when there is none."""
    path = run / METRICS_FILE if run.is_dir() else run
    if not path.is_file():
        raise PlotError(f"no {METRICS_FILE} at {run}: pass a run folder written by `uniform train` (runs/NAME)")
    return path


def plot_metrics(run: Path, out: Path | None = None) -> Path:
    """Draw the run's loss per job, gradient norm and learning rate to `out` (default RUN/metrics.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = metrics_path(run)
    records = read_metrics(path)
    if not records:
        raise PlotError(f"{path} holds no step records yet")
    out = out or path.parent / PLOT_FILE
    fig = Figure(figsize=(9, 9), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global state, no display
    loss, norm, lr = fig.subplots(3, 1, sharex=True)
    loss.plot(*series(records, "loss"), color="black", linewidth=1.5, label="all")
    for name in JOBS:
        steps, values = series(records, f"loss_{name}")
        if steps:
            loss.plot(steps, values, linewidth=0.8, marker="." if len(steps) < 50 else None, label=name)
    loss.set_ylabel("loss")
    loss.legend(loc="upper right", fontsize="small")
    norm.plot(*series(records, "grad_norm"), color="tab:red", linewidth=0.8)
    norm.set_ylabel("gradient norm")
    if all(v > 0 for v in series(records, "grad_norm")[1]):
        norm.set_yscale("log")
    lr.plot(*series(records, "lr"), color="tab:green", linewidth=1.0)
    lr.set_ylabel("learning rate")
    lr.set_xlabel("step")
    for ax in (loss, norm, lr):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{path.parent.name}: steps {records[0]['step']}-{records[-1]['step']}")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out
