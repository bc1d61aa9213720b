"""Progress of a matrix verb: the caller's callback, a rich bar on a terminal, or plain lines (log, CI)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[int, int, str], None]


LINE_EVERY_SECONDS = 10.0
"""Without a terminal (a log file, CI), a progress line is printed at most this often, and at the end."""


def make_reporter(progress: bool | ProgressCallback, total: int, label: str = "analyze", what: str = "matrices"):
    """A progress callback ``(done, total, name)``: a rich bar on a terminal, plain lines otherwise (counting
    ``what``)."""
    if callable(progress):
        return progress
    if not progress:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return _LineReporter(console, label, what)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    )  # fmt: skip
    bar.start()
    task = bar.add_task("", total=total)

    class _Reporter:
        def __call__(self, done: int, _total: int, name: str) -> None:
            bar.update(task, completed=done, description=name)

        def close(self) -> None:
            bar.stop()

    return _Reporter()


class _LineReporter:
    """Progress as plain lines on stderr (no terminal): the first matrix, then at most one line per
    ``LINE_EVERY_SECONDS``, and the end."""

    def __init__(self, console: Any, label: str, what: str = "matrices") -> None:
        from intrudim.plain_progress import PlainProgress

        self.lines = PlainProgress(console, label, LINE_EVERY_SECONDS)
        self.what = what

    def __call__(self, done: int, total: int, name: str) -> None:
        if done == total or self.lines.due():
            what = "done" if done == total else name
            self.lines(f"{done}/{total} {self.what}, {self.lines.elapsed:.0f} s ({what})", force=True)
