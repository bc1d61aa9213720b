"""The demo's one progress display: stage, run, step and ETA (rich on a terminal, plain lines otherwise)."""

from __future__ import annotations

from typing import Any


class DemoProgress:
    """One progress display for the whole demo: stage, run, step, ETA (rich on a terminal, plain lines otherwise).

    Work is counted in units: one unit per training step, and a fixed estimate for each measurement. ``label``
    names the experiment on every line (``demo``, ``regime``).
    """

    def __init__(self, total: int, *, enabled: bool = True, console: Any = None, label: str = "demo") -> None:
        self.total = max(1, total)
        self.done = 0
        self.stage = ""
        self.enabled = enabled
        self._rich = None
        self._plain = None
        if not enabled:
            return
        from rich.console import Console

        console = console or Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                  console=console, transient=False)  # fmt: skip
            self._task = self._rich.add_task("", total=self.total)
        else:
            from intrudim.plain_progress import PlainProgress

            self._plain = PlainProgress(console, label, every=10.0)

    def __enter__(self) -> DemoProgress:
        if self._rich is not None:
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._show(stage, force=True)

    def advance(self, units: int, detail: str = "") -> None:
        self.done = min(self.total, self.done + units)
        self._show(f"{self.stage} · {detail}" if detail else self.stage, force=False)

    def _show(self, text: str, *, force: bool) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=text)
        elif self._plain is not None:
            percent = 100.0 * self.done / self.total
            self._plain(f"{percent:5.1f}% ({self.done}/{self.total} units, {self._plain.elapsed:.0f} s) {text}",
                        force=force)
