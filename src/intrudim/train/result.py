"""What a training run did (TrainResult): where it stopped and why, the accuracy it reached, its intruders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainResult:
    """What a run did: where it stopped and why, the accuracy it reached, and its intruders."""

    run_dir: Path
    steps: int
    max_steps: int
    stop_reason: str  # "target_reached" | "max_steps"
    target_accuracy: float | None
    final_accuracy: float | None
    best_accuracy: float | None
    best_step: int | None
    final_dir: Path
    best_dir: Path | None
    checkpoints: list[int] = field(default_factory=list)
    final_intruders: int | None = None
    seconds: float = 0.0
    message: str = ""

    @property
    def reached_target(self) -> bool | None:
        return None if self.target_accuracy is None else self.stop_reason == "target_reached"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            run_dir=str(self.run_dir),
            final_dir=str(self.final_dir),
            best_dir=None if self.best_dir is None else str(self.best_dir),
            reached_target=self.reached_target,
        )
        return data
