"""Progress of a long loop: a rich bar on a terminal, plain lines with percentage and ETA in logs, or nothing."""

from __future__ import annotations

import time
from typing import Any


class StepProgress:
    """Steps ``done``…``total`` of ``label``: a rich bar (``show``), or (``plain``, for logs) a line with the step,
    percentage, the caller's info and the ETA at most every ``PLAIN_EVERY_S`` seconds and at the end."""

    PLAIN_EVERY_S = 10.0

    def __init__(self, label: str, total: int, show: bool, done: int = 0, *, plain: bool = False) -> None:
        self.bar: Any = None
        self.label, self.total, self.done, self.start_done = label, total, done, done
        self.lines = show and plain
        self.start = self.last = time.monotonic()
        if not show or plain:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self.bar.start()
        self.id = self.bar.add_task(label, total=total, completed=done, info="")

    def update(self, info: str) -> None:
        """One more step done; ``info``: what to show beside it (e.g. the loss)."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.id, advance=1, info=info)
        now = time.monotonic()
        if self.lines and (now - self.last >= self.PLAIN_EVERY_S or self.done == self.total):
            self.last = now
            rate = (now - self.start) / max(self.done - self.start_done, 1)
            print(f"{self.label} step {self.done}/{self.total} ({100 * self.done / self.total:.0f} %)  {info}  "
                  f"ETA {rate * (self.total - self.done):.0f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
