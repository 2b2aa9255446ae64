"""Labels as captions, templates, resume and parts of the work of the caption stage."""

import csv

import pytest
from typer.testing import CliRunner

from uniform_cli.cli.main import app
from uniform_cli.prep.caption import run_caption
from uniform_cli.prep.captioners import CaptionerConfig
from uniform_cli.prep.captioners.contract import CaptionError
from uniform_cli.prep.captioners.labels import LabelCaptioner
from uniform_cli.stage import ItemResult, Part, StatusTable


def manifest(tmp_path, labels):
    rows = ["id,url,start,end,label,split"]
    rows += [f'{key},/src/{key}.mp4,0,4,"{label}",train' for key, label in labels.items()]
    path = tmp_path / "landscape.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def read(path):
    with open(path, newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


LABELS = {"rain": "rain, falling", "waves": "ocean  waves", "nolabel": ""}


def test_labels_as_captions_with_template(tmp_path):
    src = manifest(tmp_path, LABELS)
    args = ["caption", str(src), "--root", str(tmp_path / "d"), "--captioner", "labels"]
    result = CliRunner().invoke(app, args + ["--template", "the sound of {label}"])
    assert result.exit_code == 0, result.output
    rows = read(tmp_path / "d" / "captions.csv")
    assert rows["rain"]["text"] == "the sound of rain, falling" and rows["rain"]["status"] == "ok"
    assert rows["waves"]["text"] == "the sound of ocean waves"  # runs of spaces collapse
    assert rows["rain"]["captioner"] == "labels" and rows["rain"]["model"] == "the sound of {label}"
    assert rows["nolabel"]["status"] == "no_label"


def test_bare_labels_without_template(tmp_path):
    src = manifest(tmp_path, LABELS)
    result = CliRunner().invoke(app, ["caption", str(src), "--root", str(tmp_path / "d"), "--captioner", "labels"])
    assert result.exit_code == 0, result.output
    assert read(tmp_path / "d" / "captions.csv")["rain"]["text"] == "rain, falling"


@pytest.mark.parametrize("template", ["the sound of", "{label} and {other}", "{label} {label}", "{"])
def test_bad_templates_are_refused(template):
    with pytest.raises(CaptionError):
        LabelCaptioner(template)


def test_resume_skips_done_keys_and_redoes_on_a_new_template(tmp_path):
    src = manifest(tmp_path, LABELS)
    root = tmp_path / "d"
    labels = CaptionerConfig("labels", template="the sound of {label}")
    first = run_caption(src, root, labels)
    assert first.counts == {"ok": 2, "no_label": 1} and first.table == root / "captions.csv"
    lines = (root / "captions.csv").read_text().splitlines()

    second = run_caption(src, root, labels)
    assert second.skipped == 2 and second.counts == {"no_label": 1}
    assert [l for l in (root / "captions.csv").read_text().splitlines() if l] [: len(lines)] == lines

    third = run_caption(src, root, CaptionerConfig("labels"))
    assert third.skipped == 0 and third.counts["ok"] == 2
    assert read(root / "captions.csv")["rain"]["text"] == "rain, falling"


def test_parts_split_the_keys(tmp_path):
    labels = {f"k{i}": f"label {i}" for i in range(12)}
    src = manifest(tmp_path, labels)
    root = tmp_path / "d"
    for i in range(3):
        run_caption(src, root, CaptionerConfig("labels"), part=Part(i, 3))
    parts = [read(root / f"captions.part-{i}-of-3.csv") for i in range(3)]
    assert sum(len(p) for p in parts) == 12
    assert set().union(*parts) == set(labels)


def test_video_captioner_without_clips_is_a_clear_error(tmp_path):
    src = manifest(tmp_path, LABELS)
    result = CliRunner().invoke(app, ["caption", str(src), "--root", str(tmp_path / "d"), "--model", "x/y"])
    assert result.exit_code == 1
    assert "uniform clip" in result.output


def test_a_rerun_with_every_key_captioned_builds_no_captioner(tmp_path):
    """The 7B model is loaded only when something is left: here its folder does not even exist."""
    root = tmp_path / "d"
    pllava = CaptionerConfig("pllava", model=str(tmp_path / "no-such-pllava"))
    clips = StatusTable(root / "clips.csv", ["video"])
    captions = StatusTable(root / "captions.csv", ["text", "captioner", "model"])
    for key in ("rain", "waves", "wind"):
        clips.record(ItemResult(key, "ok", fields={"video": f"clips/{key}.mp4"}))
    for key in ("rain", "waves"):
        captions.record(ItemResult(key, "ok", fields={"text": key, "captioner": "pllava", "model": pllava.model}))
    clips.close()
    captions.close()
    done = run_caption(manifest(tmp_path, {"rain": "rain", "waves": "waves"}), root, pllava)
    assert done.skipped == 2 and not done.counts
    with pytest.raises(CaptionError, match="no-such-pllava"):  # wind is left: now the captioner is built
        run_caption(manifest(tmp_path, {"rain": "rain", "waves": "waves", "wind": "wind"}), root, pllava)
