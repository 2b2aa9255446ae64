"""`uniform fetch`: download the needed seconds of every remote item in a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uniform_cli.cli import USAGE, fail, finish_stage


def main(
    manifest: Path = typer.Argument(..., help="VGGSound CSV or the toolkit's headed CSV (id,url,start,end,label,split)."),
    root: Optional[Path] = typer.Option(None, help="Data root; default data/<manifest name>/."),
    workers: int = typer.Option(4, help="Parallel downloads (threads)."),
    part: Optional[str] = typer.Option(
        None, help="I/N: this process's part of the work (default from RANK/WORLD_SIZE or SLURM)."
    ),
    cookies: Optional[Path] = typer.Option(None, help="Netscape cookies file for yt-dlp (age-gated or bot-checked videos)."),
    rate_limit: float = typer.Option(2.0, help="Most download starts per second, across all workers."),
    retries: int = typer.Option(4, help="Retries of a transient failure (network, 5xx, 429) within this run."),
    deadline: float = typer.Option(600.0, help="Seconds one download attempt may take (a trickling server times out)."),
    seconds: float = typer.Option(4.0, help="Seconds needed from each item's start."),
    margin: float = typer.Option(2.0, help="Extra seconds downloaded on both sides (clip cuts exactly)."),
    max_failures: float = typer.Option(0.5, help="Stop when more than this fraction of items has failed (after 50)."),
    max_consecutive_failures: int = typer.Option(100, help="Stop after this many failures in a row."),
    retry_failed: bool = typer.Option(False, help="Also retry permanent failures (unavailable, private, ...)."),
) -> None:
    """Download each remote item's time range as ROOT/raw/{key}.mp4 (local paths are used in place).

    Every item ends in ROOT/fetch.csv with a status; a rerun skips done items and permanent failures and
    retries the rest. Needs the ffmpeg program.

    \b
    Example: uniform fetch manifests/vggsound.csv --workers 8
    """
    from uniform_cli.prep.download import FetchSetupError
    from uniform_cli.prep.fetch import FetchOptions, run_fetch
    from uniform_cli.prep.manifest import ManifestError, default_root, read_manifest_rows
    from uniform_cli.stage import FailureGuard, TooManyFailures, parse_part

    try:
        items, bad = read_manifest_rows(manifest)
        root = root or default_root(manifest)
        options = FetchOptions(
            root=str(root), seconds=seconds, margin=margin, retries=retries, deadline=deadline,
            cookies=str(cookies) if cookies else None,
        )
        guard = FailureGuard(max_rate=max_failures, max_consecutive=max_consecutive_failures)
        result = run_fetch(
            items, root, options, part=parse_part(part), workers=workers, rate_limit=rate_limit, guard=guard,
            retry_failed=retry_failed, bad_rows=bad,
        )
    except (ManifestError, ValueError) as e:
        fail(f"uniform fetch: {e}", USAGE)
    except (FetchSetupError, TooManyFailures, OSError) as e:
        fail(f"uniform fetch: {e}")
    finish_stage(result)
