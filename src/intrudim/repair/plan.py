"""Planning a repair: per matrix, the top singular triplets of W_t, its intruders, and what λ and the control change (shared by the written, the in-memory and the swept repair)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.jobs import read_job
from intrudim.analysis.matrix import analyze_dense_matrix, analyze_lora_matrix
from intrudim.analysis.planning import AnalysisInputs, MatrixJob
from intrudim.analysis.progress import make_reporter
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
