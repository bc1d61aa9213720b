"""What a repair did, per matrix and in all (:class:`RepairResult`), and :func:`planned_repair`: every matrix planned and described."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intrudim.analysis.planning import AnalysisInputs
from intrudim.analysis.setup import open_cache
from intrudim.repair.config import RepairConfig
from intrudim.repair.plan import MatrixRepairPlan, ProgressCallback, plan_repairs, set_aside_token_rows
from intrudim.spectral.repair import (
    removed_norm,
)


@dataclass
class MatrixRepair:
    """What was done to one matrix. Ranks are 1-based (1 = largest singular value of W_t)."""

    name: str
    module: str | None
    shape: tuple[int, int]
    transposed: bool
    intruder_ranks: list[int]
    scaled_ranks: list[int]  # the directions scaled (= intruder_ranks unless the control is non-intruder)
    sigma_before: list[float]
    sigma_after: list[float]
    rank_added: int
    removed_frobenius: float  # ‖W' − W_t‖_F
    shrink_c: float | None = None  # the shrink control's c (W₀ + c·ΔW)
    norm_matched: bool | None = None  # shrink: whether it removes exactly the intruder repair's norm
    remaining_ranks: list[int] | None = None  # intruders of W' among its top-k, as `analyze` counts the output

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


def describe(plan: MatrixRepairPlan, lam: float, control: str) -> MatrixRepair:
    """The repair.json entry for one matrix at (λ, control)."""
    job = plan.job
    intruder_ranks = [j + 1 for j in plan.intruders]
    remaining = None if plan.remaining is None else list(plan.remaining)
    if control == "shrink":
        c, matched = plan.shrink(lam) if plan.intruders else (1.0, True)
        return MatrixRepair(
            name=job.base_key, module=job.module, shape=job.shape, transposed=job.transpose,
            intruder_ranks=intruder_ranks, scaled_ranks=[], sigma_before=[], sigma_after=[], rank_added=0,
            removed_frobenius=(1.0 - c) * plan.delta_norm, shrink_c=c, norm_matched=matched,
            remaining_ranks=remaining,
        )  # fmt: skip
    indices = plan.directions(control) if lam != 1.0 else []
    sigma = [float(plan.triplets.S[j]) for j in indices]
    return MatrixRepair(
        name=job.base_key, module=job.module, shape=job.shape, transposed=job.transpose,
        intruder_ranks=intruder_ranks, scaled_ranks=[j + 1 for j in indices], sigma_before=sigma,
        sigma_after=[lam * s for s in sigma], rank_added=len(indices) if plan.factors is not None else 0,
        removed_frobenius=removed_norm(plan.triplets, indices, lam), remaining_ranks=remaining,
    )  # fmt: skip


@dataclass
class RepairResult:
    """A repair of TUNED against BASE: per matrix what was scaled, and where the output was written."""

    base: str
    tuned: str
    tuned_kind: str  # "lora" or "dense"
    config: RepairConfig
    matrices: list[MatrixRepair]
    skipped: list[dict[str, str]]
    output: str | None = None
    output_kind: str | None = None  # "adapter" or "model"
    unchanged: bool = False  # nothing to scale: the output is a bit-for-bit copy of the input
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_intruders(self) -> int:
        return sum(len(m.intruder_ranks) for m in self.matrices)

    @property
    def matrices_changed(self) -> int:
        return sum(1 for m in self.matrices if m.removed_frobenius > 0)

    @property
    def remaining_intruders(self) -> int | None:
        """Intruders of the repaired weights W' (k, ε as before), summed over matrices: what ``analyze`` of the
        output counts. None when they were not counted."""
        if any(m.remaining_ranks is None for m in self.matrices):
            return None
        return sum(len(m.remaining_ranks or []) for m in self.matrices)

    @property
    def matrices_with_remaining_intruders(self) -> int | None:
        if self.remaining_intruders is None:
            return None
        return sum(1 for m in self.matrices if m.remaining_ranks)

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "tuned": self.tuned,
            "tuned_kind": self.tuned_kind,
            "lambda": self.config.lam,
            "k": self.config.k,
            "epsilon": self.config.epsilon,
            "control": self.config.control,
            "total_intruders": self.total_intruders,
            "remaining_intruders": self.remaining_intruders,
            "matrices_with_remaining_intruders": self.matrices_with_remaining_intruders,
            "matrices_changed": self.matrices_changed,
            "rank_added": sum(m.rank_added for m in self.matrices),
            "unchanged": self.unchanged,
            "output": self.output,
            "output_kind": self.output_kind,
            "matrices": [m.to_json() for m in self.matrices],
            "skipped": self.skipped,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
            "config": asdict(self.config),
            "definition": "W' = W_t + (lambda - 1) * sum_{j in I} sigma_j u_j v_j^T, I = intruders among the top-k "
            "singular vectors of W_t (max |cos| to every base left singular vector < epsilon); written exactly "
            "(LoRA rank r + |I|), never truncated",
            "remaining_definition": "remaining_intruders / remaining_ranks: the intruders of W' among its own top-k "
            "(same k, epsilon, base SVD), counted on the weights as written: what `intrudim analyze BASE OUTPUT` "
            "counts. A singular value scaled by lambda > 0 can still rank in the top-k and still be a new direction",
        }

    def _remaining_lines(self) -> list[str]:
        remaining, config = self.remaining_intruders, self.config
        if remaining is None or self.unchanged:
            return []
        where = f"in {self.matrices_with_remaining_intruders} matrices " if remaining else ""
        line = (f"after the repair: {remaining} intruder dimensions remain {where}({self.total_intruders} before; "
                f"k={config.k}, ε={config.epsilon}, counted on the output as `intrudim analyze` counts them)")  # fmt: skip
        if remaining == 0:
            return [line]
        if config.control == "none":
            why = (f"a σ scaled by λ={config.lam:g} can still rank in the top-{config.k} and still be a new "
                   f"direction; a smaller --lambda (0 removes the directions) leaves fewer")  # fmt: skip
        elif config.control == "non-intruder":
            why = "the non-intruder control scales other directions and leaves the intruders as they are"
        else:
            why = "the shrink control scales all of ΔW by c, the intruders with the rest"
        return [line, why]

    def summary_lines(self) -> list[str]:
        what = {"none": "intruder", "non-intruder": "non-intruder control", "shrink": "shrink control"}[self.config.control]
        lines = [
            f"{self.total_intruders} intruder dimensions (k={self.config.k}, ε={self.config.epsilon}) in "
            f"{sum(1 for m in self.matrices if m.intruder_ranks)} of {len(self.matrices)} matrices; "
            f"{what} repair at λ={self.config.lam:g} changed {self.matrices_changed} matrices",
        ]
        if self.unchanged:
            lines.append("nothing to scale: the output is an unchanged, bit-for-bit copy of the input")
        lines += self._remaining_lines()
        if self.output:
            lines.append(f"wrote the repaired {self.output_kind} to {self.output}")
        return lines


def planned_repair(
    inputs: AnalysisInputs, config: RepairConfig, cache_dir: str | Path | None, use_cache: bool,
    progress: bool | ProgressCallback,
) -> tuple[list[MatrixRepairPlan], RepairResult]:  # fmt: skip
    """Every matrix's repair planned (with the intruders that remain at ``config``'s λ and control) and described:
    what :func:`repair` writes and :func:`~intrudim.repair.in_memory.repair_peft_model` loads."""
    set_aside_token_rows(inputs)
    cache = open_cache(config.analyze_config, cache_dir, use_cache)
    plans = plan_repairs(inputs, cache, config, with_control=config.control == "non-intruder", progress=progress,
                         remaining_at=(config.lam, config.control))  # fmt: skip
    result = RepairResult(
        base=inputs.base_spec, tuned=inputs.tuned_spec, tuned_kind=inputs.tuned_kind, config=config,
        matrices=[describe(plan, config.lam, config.control) for plan in plans], skipped=list(inputs.skipped),
    )  # fmt: skip
    return plans, result
