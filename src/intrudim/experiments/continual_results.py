"""What a continual run measured: one stage's record, one method's stages, the whole result (JSON, CSV)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intrudim.experiments.continual_config import FORMAT_VERSION, ContinualConfig


@dataclass
class StageRecord:
    """One stage of one method: accuracies of every task and intruders against the original base."""

    stage: int  # 0 = the base model, t = after training the t-th task
    task: str | None  # the task trained in this stage (None for stage 0)
    accuracies: dict[str, float | None]
    intruders: int
    energy_share: float  # mean over analysed matrices of Σ_{j∈I} σ_j² / ‖W_t‖_F²
    energy_share_sum: float
    matrices_with_intruders: int
    matrices_analysed: int
    epsilon_sweep: dict[str, int] = field(default_factory=dict)
    train_steps: int | None = None
    train_accuracy: float | None = None  # the run's own last held-out accuracy (before merging)
    train_seconds: float | None = None
    evaluate_seconds: float = 0.0
    analysis_seconds: float = 0.0
    weights: str | None = None  # merged/ folder of the stage (None when pruned, or for stage 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class MethodResult:
    """The continual run of one method: its stages, in order."""

    label: str  # r-<rank> | full
    method: str  # lora | lora-b-only | full
    rank: int | None
    tasks: tuple[str, ...]
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def accuracy_matrix(self) -> list[list[float | None]]:
        """(stages + 1) × tasks: row s = accuracies after stage s (row 0 = the base), None where not measured."""
        return [[stage.accuracies.get(task) for task in self.tasks] for stage in self.stages]

    @property
    def baselines(self) -> dict[str, float | None]:
        """Each task's accuracy right after its own stage."""
        return {task: (self.stages[i + 1].accuracies.get(task) if i + 1 < len(self.stages) else None)
                for i, task in enumerate(self.tasks)}  # fmt: skip

    @property
    def intruders(self) -> list[int]:
        return [stage.intruders for stage in self.stages]

    @property
    def energy_shares(self) -> list[float]:
        return [stage.energy_share for stage in self.stages]

    @property
    def forgetting(self) -> dict[str, float | None]:
        """Baseline − accuracy after the last stage, for each task trained before the last one."""
        if len(self.stages) < 2:
            return {}
        last = self.stages[-1].accuracies
        result: dict[str, float | None] = {}
        for task, baseline in list(self.baselines.items())[: len(self.stages) - 2]:
            final = last.get(task)
            result[task] = None if baseline is None or final is None else baseline - final
        return result

    @property
    def mean_forgetting(self) -> float | None:
        values = [value for value in self.forgetting.values() if value is not None]
        return sum(values) / len(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "method": self.method, "rank": self.rank, "tasks": list(self.tasks),
            "accuracy": self.accuracy_matrix, "baselines": self.baselines, "intruders": self.intruders,
            "energy_share": self.energy_shares, "forgetting": self.forgetting,
            "mean_forgetting": self.mean_forgetting, "stages": [stage.to_json() for stage in self.stages],
        }  # fmt: skip


@dataclass
class ContinualResult:
    """Everything a continual run measured, per method (``methods`` keyed by ``r-<rank>`` / ``full``)."""

    config: ContinualConfig
    out_dir: Path
    base_model: str
    objective: str  # classification | causal-lm
    methods: dict[str, MethodResult]
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def accuracy_matrix(self, label: str) -> list[list[float | None]]:
        return self.methods[label].accuracy_matrix

    def baselines(self, label: str) -> dict[str, float | None]:
        return self.methods[label].baselines

    def intruders(self, label: str) -> list[int]:
        return self.methods[label].intruders

    def energy_shares(self, label: str) -> list[float]:
        return self.methods[label].energy_shares

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "intrudim-continual-result", "format_version": FORMAT_VERSION,
            "config": self.config.to_json(), "base_model": self.base_model, "objective": self.objective,
            "tasks": list(self.config.tasks), "stages": ["base", *self.config.tasks], "k": self.config.k,
            "epsilon": self.config.epsilon,
            "methods": {label: method.to_json() for label, method in self.methods.items()},
            "paths": {name: str(path) for name, path in self.paths.items()}, "seconds": round(self.seconds, 2),
            "definitions": {
                "accuracy": "accuracy[s][i]: held-out accuracy of task i after stage s (s = 0: the base model); "
                "None where the task has no head yet (encoders: a task's head is trained in its own stage)",
                "baseline": "a task's accuracy right after its own stage (its head, the weights merged)",
                "forgetting": "baseline minus the accuracy after the last stage",
                "intruders": "intruder dimensions of the weights after each stage against the ORIGINAL base "
                "(k, epsilon as given), summed over the analysed matrices",
                "energy_share": "mean over analysed matrices of the intruders' share of the matrix energy, "
                "sum_{j in I} sigma_j^2 / ||W_t||_F^2",
                "head": "encoders: BERT's pooler and the classifier (one per task); causal LMs: the LM head scores "
                "each label's answer text",
            },
        }  # fmt: skip

    def to_csv(self) -> str:
        """One row per (method, stage, task): accuracy, the task's baseline, and the stage's intruders."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["method", "rank", "stage", "trained_task", "task", "accuracy", "baseline", "intruders",
                         "energy_share", "matrices_with_intruders"])  # fmt: skip
        for label, method in self.methods.items():
            baselines = method.baselines
            for stage in method.stages:
                for task in self.config.tasks:
                    accuracy, baseline = stage.accuracies.get(task), baselines.get(task)
                    writer.writerow([
                        label, "full" if method.rank is None else method.rank, stage.stage, stage.task or "",
                        task, "" if accuracy is None else f"{accuracy:.6f}",
                        "" if baseline is None else f"{baseline:.6f}", stage.intruders, f"{stage.energy_share:.6g}",
                        stage.matrices_with_intruders,
                    ])  # fmt: skip
        return buffer.getvalue()
