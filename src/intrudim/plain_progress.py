"""Progress as plain lines, for when stderr is not a terminal (a log file, CI, ``nohup``).

A rich bar prints nothing useful there, so long work (analyze/repair, forgetting, training) writes one line
``"<label>: <text>"`` on the first report, then at most one every ``every`` seconds, and whenever the caller
forces one (the end, a new phase).
"""

from __future__ import annotations

import time
from typing import Any


class PlainProgress:
    """Throttled progress lines on ``console`` (a rich Console on stderr)."""

    def __init__(self, console: Any, label: str, every: float) -> None:
        self.console, self.label, self.every = console, label, every
        self.started = time.monotonic()
        self.last: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since this progress started."""
        return time.monotonic() - self.started

    def due(self) -> bool:
        """Whether a line would be printed now without forcing it."""
        return self.last is None or time.monotonic() - self.last >= self.every

    def __call__(self, text: str, *, force: bool = False) -> None:
        if force or self.due():
            self.console.print(f"{self.label}: {text}", highlight=False, soft_wrap=True)
            self.last = time.monotonic()
