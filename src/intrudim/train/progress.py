"""A rich progress bar on stderr with the current loss and held-out accuracy."""

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


class TrainingProgress:
    """Context manager; ``update(step, loss, accuracy)`` after every step. Does nothing when disabled."""

    def __init__(self, total: int, completed: int, *, enabled: bool, description: str) -> None:
        self._progress: Progress | None = None
        self._task = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[accuracy]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self._task = self._progress.add_task(description, total=total, completed=completed, loss="-", accuracy="-")

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, loss: float | None, accuracy: float | None) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task,
            completed=step,
            loss="-" if loss is None else f"{loss:.4f}",
            accuracy="-" if accuracy is None else f"{accuracy:.3f}",
        )
