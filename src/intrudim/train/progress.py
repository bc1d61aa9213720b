"""A rich progress bar on stderr with the current loss and held-out accuracy.

When stderr is not a terminal (a log file, CI, ``nohup``), a bar would print nothing useful: one plain line is
written every ``LINE_EVERY_SECONDS`` instead (and at the end), and each phase (evaluation, final tracking) is
named when it starts.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from intrudim.plain_progress import PlainProgress

LINE_EVERY_SECONDS = 30.0


class TrainingProgress:
    """Context manager; ``update(step, loss, accuracy)`` after every step. Does nothing when disabled."""

    def __init__(self, total: int, completed: int, *, enabled: bool, description: str) -> None:
        self._progress: Progress | None = None
        self._task = None
        console = Console(stderr=True)
        self._lines = PlainProgress(console, description, LINE_EVERY_SECONDS) if enabled and not console.is_terminal else None
        self._total, self._description = total, description
        self._state = (completed, "-", "-")
        if enabled and self._lines is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[accuracy]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            )  # fmt: skip
            self._task = self._progress.add_task(description, total=total, completed=completed, loss="-", accuracy="-")

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        if self._lines is not None:
            self._lines(f"step {self._state[0]}/{self._total}", force=True)
        return self

    def message(self, text: str) -> None:
        """Say what the run is doing now (evaluating, tracking intruders…)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=f"{self._description} ({text})")
        elif self._lines is not None:
            self._lines(text, force=True)

    def _line(self, *, force: bool) -> None:
        assert self._lines is not None
        step, loss, accuracy = self._state
        self._lines(f"step {step}/{self._total}, loss {loss}, acc {accuracy}, {self._lines.elapsed:.0f} s", force=force)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._lines is not None:
            self._line(force=True)

    def update(self, step: int, loss: float | None, accuracy: float | None) -> None:
        loss_text = "-" if loss is None else f"{loss:.4f}"
        accuracy_text = "-" if accuracy is None else f"{accuracy:.3f}"
        self._state = (step, loss_text, accuracy_text)
        if self._lines is not None:
            self._line(force=False)
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task, description=self._description, completed=step, loss=loss_text, accuracy=accuracy_text
        )
