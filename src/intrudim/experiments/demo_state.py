"""What the steps of one seed of a demo share: its settings, its folder, the progress, and each measurement made or
reused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intrudim.experiments.demo_config import DemoConfig, DemoRecipe
from intrudim.experiments.demo_progress import DemoProgress
from intrudim.fileio import write_json_atomic


@dataclass
class Demo:
    """State shared by the steps of one seed of a demo: ``out`` is OUT/seed-S, ``root`` is OUT."""

    config: DemoConfig
    seed: int
    root: Path
    out: Path
    progress: DemoProgress
    workers: int = 2  # training runs (and continual's methods) side by side
    device: str = "cpu"  # where training, forgetting and base SVDs run: "cpu" or "cuda" (resolved, never "auto")
    measurements: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # runs and measurements a previous demo in OUT had finished

    @property
    def recipe(self) -> DemoRecipe:
        return self.config.recipe

    @property
    def cache_dir(self) -> Path:
        """One base-SVD cache for every seed (the base does not change with the seed)."""
        return self.root / "svd_cache"

    def reuse_or_measure(
        self, key: str, units: int, measure: Callable[[], dict[str, Any]], *, units_inside: int = 0
    ) -> dict[str, Any]:
        """The JSON of one measurement: read from OUT/measurements/KEY.json if a previous demo wrote it.

        ``units_inside``: progress units that ``measure`` advances itself (training steps), skipped at once on reuse.
        """
        path = self.out / "measurements" / f"{key}.json"
        started = time.perf_counter()
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.progress.advance(units + units_inside, f"{key} (reused)")
            self.reused.append(key)
        else:
            data = measure()
            write_json_atomic(path, data)
            self.progress.advance(units, key)
        self.measurements[key] = data
        self.seconds[key] = round(time.perf_counter() - started, 2)
        return data
