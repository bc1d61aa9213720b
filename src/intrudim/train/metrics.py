"""metrics.jsonl: one JSON record per line (train loss, eval accuracy, checkpoint intruders, stop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from intrudim.fileio import write_text_atomic
from intrudim.train.run_dir import METRICS_FILE


class MetricsLog:
    """Append-only JSON-lines log, flushed after every record so an interrupted run keeps its history."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by an interruption
                continue
        return records

    def reset(self) -> None:
        write_text_atomic(self.path, "")

    def keep_until(self, step: int) -> None:
        """On resume: drop the records written after the checkpoint at ``step`` (they will be re-made)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step and r.get("event") not in ("stop", "final")]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
