"""`intrudim repair BASE TUNED`: scale the intruders' singular values by λ and write the result exactly (v2).

For each matrix planned as ``analyze`` plans it (same k, ε, selection), the top singular triplets of W_t
come from the structured top-k (LoRA) or a Lanczos top-k (dense), the intruders among the top-k are found
as in ``analyze``, and W' = W_t + (λ − 1)·Σ_{j∈I} σ_j u_j v_jᵀ is written:
- for a LoRA adapter, as a PEFT adapter of rank r + |I| on the repaired modules (``rank_pattern`` /
  ``alpha_pattern``), exact: merged, it equals W' up to the output dtype's rounding; a weight the adapter saved
  whole (``modules_to_save``) is repaired as a dense fine-tune and written back whole in the adapter;
- for a dense (fully fine-tuned) model, as merged weights, sharded like the input.
An adapter or model without intruders is copied unchanged, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.planning import AnalysisInputs, MatrixJob, open_inputs
from intrudim.analysis.running import (
    analyze_dense_matrix,
    analyze_lora_matrix,
    check_device,
    make_reporter,
    open_cache,
    read_job,
)
from intrudim.errors import IntrudimError
from intrudim.models.references import is_peft_model
from intrudim.repair.config import RepairConfig
from intrudim.spectral.repair import (
    RankUpdate,
    SingularTriplets,
    alpha_for_scale,
    control_indices,
    dense_top_triplets,
    extend_lora_factors,
    intruder_indices,
    lora_delta_norm,
    lora_top_triplets,
    removed_norm,
    scaled_directions_update,
    shrink_factor,
)
from intrudim.threads import analysis_threads
from intrudim.weights.peft_adapter import LoraFactors
from intrudim.weights.svd_cache import BaseSVDCache

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class MatrixRepairPlan:
    """What repair knows of one matrix: its top triplets, intruders and ΔW norm; any λ/control is cheap after."""

    job: MatrixJob
    triplets: SingularTriplets
    intruders: list[int]  # 0-based, among the top-k
    non_intruders: list[int]  # the ``non-intruder`` control's directions (as many as intruders)
    delta_norm: float  # ‖ΔW‖_F
    factors: LoraFactors | None  # LoRA modules: the adapter's factors
    remaining: list[int] | None = None  # 1-based ranks of the intruders of W' (the repair at one λ/control)

    def directions(self, control: str) -> list[int]:
        return self.non_intruders if control == "non-intruder" else self.intruders

    def removed_norm(self, lam: float) -> float:
        """‖W' − W_t‖_F of the intruder repair at λ (the shrink control matches it)."""
        return removed_norm(self.triplets, self.intruders, lam)

    def shrink(self, lam: float) -> tuple[float, bool]:
        """The ``shrink`` control's c (W₀ + c·ΔW) at λ, and whether it matches the removed norm."""
        return shrink_factor(self.delta_norm, self.removed_norm(lam))

    def update(self, lam: float, control: str) -> RankUpdate | None:
        """W' − W_t as factors for ``none``/``non-intruder`` (None when nothing changes); not for ``shrink``."""
        indices = self.directions(control)
        if not indices or lam == 1.0:
            return None
        return scaled_directions_update(self.triplets, indices, lam)

    def lora_replacement(
        self, lam: float, control: str, use_rslora: bool
    ) -> tuple[torch.Tensor, torch.Tensor, float | None] | None:
        """(B', A', α' or None) that make the repaired update exactly (float64), or None when the factors stay:
        rank r + |I| with α' keeping the scale for ``none``/``non-intruder``; (c·B, A) at the same rank for
        ``shrink``."""
        factors = self.factors
        if factors is None or not self.intruders:
            return None
        if control == "shrink":
            c, _ = self.shrink(lam)
            return factors.B.to(torch.float64) * c, factors.A.to(torch.float64), None
        update = self.update(lam, control)
        if update is None:
            return None
        B_new, A_new = extend_lora_factors(factors.B, factors.A, factors.scale, update)
        return B_new, A_new, alpha_for_scale(factors.scale, int(A_new.shape[0]), use_rslora)

    def dense_replacement(
        self, Wt: torch.Tensor, W0: torch.Tensor | None, lam: float, control: str
    ) -> torch.Tensor | None:
        """W' (float64, analysed orientation) of a dense matrix (a dense TUNED's, or a weight saved whole), or None
        when it stays: W_t + (λ − 1)·Σ σ_j u_j v_jᵀ, or W₀ + c·ΔW for ``shrink`` (which alone needs W₀)."""
        if not self.intruders or self.factors is not None:
            return None
        Wt64 = Wt.to(torch.float64)
        if control == "shrink":
            assert W0 is not None, "the shrink control needs W₀"
            c, _ = self.shrink(lam)
            W0_64 = W0.to(torch.float64)
            return W0_64 + c * (Wt64 - W0_64)
        update = self.update(lam, control)
        return None if update is None else Wt64 + update.dense()


def remaining_intruders(
    plan: MatrixRepairPlan,
    W0: torch.Tensor,
    base_svd: Any,
    Wt: torch.Tensor | None,
    lam: float,
    control: str,
    config: AnalyzeConfig,
    use_rslora: bool,
) -> list[int]:
    """1-based ranks of the intruders of the repaired W' among its top-k, counted as ``analyze`` counts them on the
    written output: the factors (or weights) the writer writes, cast to their stored dtype, through analyze's own
    structured (LoRA) or dense path, against the same base SVD (no second read of W₀ or of the cache).

    A σ scaled by λ can still rank in the top-k and still be a new direction, so a repair at λ > 0 often leaves some
    intruders; scaling them can also bring a new one into the top-k."""
    factors = plan.factors
    if factors is not None:
        replacement = plan.lora_replacement(lam, control, use_rslora)
        if replacement is None:
            return [j + 1 for j in plan.intruders]
        B_new, A_new, alpha = replacement
        rank = int(A_new.shape[0])
        # the scale a reader of the written adapter computes from its alpha_pattern / rank_pattern
        scale = factors.scale if alpha is None else alpha / (math.sqrt(rank) if use_rslora else rank)
        B_stored, A_stored = B_new.to(factors.B.dtype), A_new.to(factors.A.dtype)
        return analyze_lora_matrix(plan.job, W0, base_svd, A_stored, B_stored, scale, config).intruder_ranks
    assert Wt is not None
    W_new = plan.dense_replacement(Wt, W0, lam, control)
    if W_new is None:
        return [j + 1 for j in plan.intruders]
    W_stored = W_new.to(Wt.dtype)
    if torch.equal(W_stored, W0.to(Wt.dtype)):
        return []  # W' = W₀ (shrink with c = 0): analyze finds the base's own vectors
    return analyze_dense_matrix(plan.job, W0, base_svd, W_stored, config).intruder_ranks


def plan_matrix(
    inputs: AnalysisInputs,
    job: MatrixJob,
    cache: BaseSVDCache,
    config: AnalyzeConfig,
    with_control: bool,
    remaining_at: tuple[float, str] | None = None,
) -> MatrixRepairPlan:
    """Top triplets and intruders of one planned matrix (structured for LoRA; Lanczos for dense).

    W₀, its cache entry and the factors (or W_t) are read as ``analyze`` reads them (:func:`read_job`): with the
    cache's key memo, a LoRA repair of an unchanged base reads no base matrix and hashes nothing. ``config``: the
    repair's :attr:`RepairConfig.analyze_config`. ``remaining_at`` (λ, control): also count the intruders left in
    the repaired matrix (:func:`remaining_intruders`, into ``plan.remaining``) while W₀'s SVD is at hand."""
    k, epsilon = config.k, config.epsilon
    read = read_job(inputs, job, cache, config)
    W0 = read.W0
    base_svd = cache.resolve(W0, read.cached)
    p = base_svd.rank_dim
    factors = read.factors
    Wt = read.Wt

    def top(count: int) -> SingularTriplets:
        if factors is not None:
            return lora_top_triplets(base_svd, factors.B, factors.A, factors.scale, count, device=cache.device, W0=W0)
        assert Wt is not None
        return dense_top_triplets(Wt, base_svd.U, count)

    triplets = top(k)
    intruders = intruder_indices(triplets.max_cos, epsilon, k)
    non_intruders: list[int] = []
    if with_control and intruders:
        wanted = min(p, k + len(intruders))
        if wanted > triplets.k:
            triplets = top(wanted)
        non_intruders = control_indices(triplets.max_cos, epsilon, k)
    if factors is not None:
        delta_norm = lora_delta_norm(factors.B, factors.A, factors.scale)
    else:
        assert Wt is not None
        delta_norm = float(torch.linalg.matrix_norm(Wt.to(torch.float64) - W0.to(torch.float64)))
    plan = MatrixRepairPlan(job, triplets, intruders, non_intruders, delta_norm, factors)
    if remaining_at is not None:
        use_rslora = bool(inputs.adapter is not None and inputs.adapter.use_rslora)
        plan.remaining = remaining_intruders(plan, W0, base_svd, Wt, *remaining_at, config, use_rslora)
    return plan


TOKEN_ROWS_NOT_REPAIRED = (
    "rows replaced by the adapter's trainable tokens: `analyze` counts the table's intruders, but the adapter stores "
    "only those rows while a repair of the table changes every row, so repair leaves these rows as they are; to "
    "repair the table too, merge the adapter and repair the merged model"
)


def set_aside_token_rows(inputs: AnalysisInputs) -> None:
    """Take the embeddings an adapter's trainable tokens change out of a repair's jobs, each listed in
    ``inputs.skipped`` with the reason: the repaired adapter keeps those rows unchanged, and the result says so.

    Weights the adapter saved whole (``modules_to_save``) stay planned: they are repaired as a dense fine-tune and
    written back whole in the repaired adapter."""
    if inputs.adapter is None:
        return
    for job in inputs.jobs:
        if job.token_rows:
            inputs.skipped.append({"name": job.base_key, "reason": TOKEN_ROWS_NOT_REPAIRED})
    inputs.jobs = [job for job in inputs.jobs if not job.token_rows]


def plan_repairs(
    inputs: AnalysisInputs,
    cache: BaseSVDCache,
    config: RepairConfig,
    *,
    with_control: bool,
    progress: bool | ProgressCallback = False,
    remaining_at: tuple[float, str] | None = None,
) -> list[MatrixRepairPlan]:
    """:func:`plan_matrix` for every planned matrix, with numpy/scipy BLAS single-threaded (intrudim.threads);
    ``remaining_at`` (λ, control): also the intruders left after that repair, per matrix."""
    reporter = make_reporter(progress, len(inputs.jobs), "repair")
    analyze_config = config.analyze_config  # built (and validated) once, not per matrix
    plans = []
    try:
        with analysis_threads():
            for i, job in enumerate(inputs.jobs):
                if reporter is not None:
                    reporter(i, len(inputs.jobs), job.base_key)
                plans.append(plan_matrix(inputs, job, cache, analyze_config, with_control, remaining_at))
        if reporter is not None:
            reporter(len(inputs.jobs), len(inputs.jobs), "done")
    finally:
        if hasattr(reporter, "close"):
            reporter.close()  # type: ignore[union-attr]
    return plans


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


def repair(
    base: Any = None,
    tuned: Any = None,
    config: RepairConfig | None = None,
    *,
    out: str | Path | None = None,
    merged: bool = False,
    overwrite: bool = False,
    adapter_name: str | None = None,
    new_adapter_name: str = "repaired",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | ProgressCallback = False,
    **overrides: Any,
) -> RepairResult:
    """Scale TUNED's intruders by λ against BASE and write OUT/adapter (LoRA) or OUT/model (dense, or ``merged``),
    plus OUT/repair.json and OUT/report.html. The intruders left in the repaired weights (what ``analyze`` of the
    output counts) are in ``result.remaining_intruders`` and per matrix in ``remaining_ranks``.

    BASE and TUNED take every reference of :mod:`intrudim.models` (BASE None: the adapter's recorded base). A
    ``PeftModel`` without ``out`` is repaired in memory: the repaired adapter is added to it as
    ``new_adapter_name`` (:mod:`intrudim.repair.in_memory`).

    Example::

        result = intrudim.repair("smollm2", "runs/lora-r1", lam=0.5, out="runs/lora-r1-repaired")
        print(result.total_intruders, result.output)
        result = intrudim.repair(peft_model, lam=0.75)  # then peft_model.set_adapter("repaired")
    """
    from dataclasses import replace

    from intrudim.repair.writers import output_name, prepare_output, write_outputs

    config = replace(config, **overrides) if config is not None else RepairConfig(**overrides)
    check_device(config.device)
    if tuned is None:
        base, tuned = None, base  # repair(adapter_or_peft_model, ...)
    if tuned is None:
        raise IntrudimError("repair needs TUNED: a LoRA adapter, a fine-tuned model, or a PeftModel in memory.")
    if out is None:
        from intrudim.repair.in_memory import repair_peft_model

        if base is not None or not is_peft_model(tuned):
            raise IntrudimError(
                "repair needs out=DIR to write the repaired adapter or model to (only a PeftModel given alone is "
                "repaired in memory, as a new adapter of it)."
            )
        return repair_peft_model(tuned, config, adapter_name=adapter_name, new_adapter_name=new_adapter_name,
                                 cache_dir=cache_dir, use_cache=use_cache, progress=progress)  # fmt: skip
    started = time.perf_counter()
    analyze_config = config.analyze_config
    with open_inputs(base, tuned, analyze_config, adapter_name=adapter_name) as inputs:
        out_dir = prepare_output(Path(out), inputs, merged=merged, overwrite=overwrite)
        plans, result = planned_repair(inputs, config, cache_dir, use_cache, progress)
        plain_progress_line(progress, f"writing {out_dir / output_name(inputs, merged)}")
        write_outputs(result, plans, inputs, out_dir, merged=merged, overwrite=overwrite)
    result.seconds = time.perf_counter() - started
    from intrudim.fileio import write_json_atomic
    from intrudim.report.repair_report import write_repair_report

    write_json_atomic(out_dir / "repair.json", result.to_json())
    write_repair_report(result, out_dir)
    plain_progress_line(progress, f"done in {result.seconds:.0f} s")
    return result


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


def plain_progress_line(progress: bool | ProgressCallback, text: str, label: str = "repair") -> None:
    """One ``"<label>: <text>"`` line on stderr when ``progress`` is on (True) and stderr is not a terminal (a log
    file, a pipe, CI), where a rich bar shows nothing; on a terminal the bar of :func:`plan_repairs` says enough."""
    if progress is not True:
        return
    from rich.console import Console

    from intrudim.plain_progress import PlainProgress

    console = Console(stderr=True)
    if not console.is_terminal:
        PlainProgress(console, label, every=0.0)(text, force=True)
