"""Progress that reads well on a terminal and in a log: a live bar on a terminal; without one (a batch job's
log file), a plain line now and then, so that a long run shows it is alive."""

from __future__ import annotations

import time
from typing import Any


class LogProgress:
    """`done` of `total` units with a few named numbers, as a rich bar or as plain lines every `every` seconds."""

    def __init__(self, console, label: str, total: int, done: int = 0, every: float = 30.0, unit: str = "") -> None:
        self.console = console
        self.label = label
        self.total = total
        self.unit = unit
        self.every = every
        self.done = self.start_done = done
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                                TimeRemainingColumn(), console=console, transient=True)
            self.task = self.bar.add_task(label, total=total, completed=done, note="")
            self.bar.start()

    def advance(self, n: int = 1) -> None:
        """`n` more units done."""
        self.update(self.done + n)

    def update(self, done: int, **fields: Any) -> None:
        self.done = done
        note = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.update(self.task, completed=done, note=note)
            return
        now = time.monotonic()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.start_done) / max(now - self.t0, 1e-9)
        left = f", about {(self.total - done) / rate / 60:.1f} min left" if rate > 0 and done < self.total else ""
        self.console.print(f"{self.label}: {done}/{self.total}{self.unit} ({done / max(self.total, 1):.0%})"
                           f"{', ' + note if note else ''}{left}", markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
