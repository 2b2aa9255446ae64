"""`results.jsonl`: one JSON line per generated output, written as each output is done.

A run of the whole work writes `results.jsonl`, part I of N (`--part I/N`) `results.part-I-of-N.jsonl`.
Generating an output again replaces its line. `read_results` reads every results file of a folder (the newest
line of a name wins), and `merge_results` folds them into one `results.jsonl`, as `uniform generate` without
`--part` does at its end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from uniform_cli.atomic import open_append, read_complete, write_text_atomic
from uniform_cli.stage import Part

RESULTS = "results.jsonl"


def results_path(out_dir: Path, part: Part) -> Path:
    """The results file `part`'s process writes in `out_dir`."""
    return out_dir / f"results{part.suffix}.jsonl"


def read_results(out_dir: Path) -> dict[str, dict]:
    """One results line per output name over every results file of `out_dir` (the newest line of a name wins:
    a rerun or another process replaced it); a line cut off by a kill, and lines that are no record, are
    ignored."""
    best: dict[str, dict] = {}
    for path in sorted(Path(out_dir).glob("results*.jsonl")):
        if path.is_symlink():  # planted: never read (and the next append refuses it)
            continue
        for text in read_complete(path).splitlines():
            try:
                record = json.loads(text)
                name, when = record["id"], float(record.get("time", 0))
            except (ValueError, KeyError, TypeError):
                continue
            if name not in best or when >= float(best[name].get("time", 0)):
                best[name] = record
    return best


class ResultsFile:
    """This process's results file: one line per output name. A name written again (a rerun with new
    settings) replaces its line, by an atomic rewrite of the file; a new name is appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, str] = {}
        if path.is_file() and not path.is_symlink():
            for text in read_complete(path).splitlines():
                try:
                    self.lines[json.loads(text)["id"]] = text
                except (ValueError, KeyError, TypeError):
                    continue

    def write(self, record: dict) -> None:
        text = json.dumps(record, ensure_ascii=False)
        if record["id"] in self.lines:
            self.lines[record["id"]] = text
            write_text_atomic(self.path, "".join(line + "\n" for line in self.lines.values()))
            return
        self.lines[record["id"]] = text
        append_line(self.path, text)


def merge_results(out_dir: Path) -> Path:
    """Merge every results file of `out_dir` (those of `--part` runs too) into one `results.jsonl` with one line
    per output, and delete the part files it took in. `uniform generate` without `--part` does this at its end."""
    path = Path(out_dir) / RESULTS
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_results(out_dir).values())
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    for other in Path(out_dir).glob("results.part-*.jsonl"):
        other.unlink()
    return path


def append_line(path: Path, text: str) -> None:
    """Append one line, flushed to disk (never through a link at `path`; a partial line left by a kill is cut)."""
    with open_append(path) as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
