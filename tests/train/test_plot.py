"""`uniform plot`: a run's metrics.jsonl drawn to a PNG."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tests.train.test_loop import make_recipe, shards  # noqa: F401 (shards is a fixture)
from uniform_cli.cli.main import app
from uniform_cli.train.loop import train
from uniform_cli.train.plot import read_metrics, series


def test_plot_draws_a_runs_curves_to_a_png(tmp_path, shards):  # noqa: F811
    run = train(make_recipe(tmp_path, shards, "plotted", steps=4))
    with open(run / "metrics.jsonl", "a") as f:  # a run killed while writing its last line
        f.write('{"step": 5, "lo')
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    steps, values = series(records, "loss_t2av")
    assert steps == [r["step"] for r in records if "loss_t2av" in r] and all(np.isfinite(values))

    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    picture = Image.open(run / "metrics.png")
    assert picture.format == "PNG" and picture.size == (900, 900)
    pixels = np.asarray(picture.convert("RGB"))
    assert (pixels < 128).any() and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16  # drawn, not blank
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "elsewhere" / "curves.png")])
    assert result.exit_code == 0 and (tmp_path / "elsewhere" / "curves.png").is_file()


def test_plot_without_metrics_is_a_usage_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"note": "not a step record"}) + "\n")
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no step records" in result.output
    assert not (tmp_path / "metrics.png").exists()
