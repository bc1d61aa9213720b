"""One matrix through intrudim.spectral into a MatrixResult: the structured LoRA path or the dense one."""

from __future__ import annotations

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.planning import MatrixJob
from intrudim.analysis.results import MatrixResult
from intrudim.spectral.intruders import (
    count_intruders,
    epsilon_sweep,
    intruder_energy_share,
    intruder_pressure,
    intruder_ranks,
    max_abs_cosine,
    update_alignment,
)
from intrudim.spectral.structured import (
    CoreTopK,
    GramCore,
    LoraCore,
    core_full_spectrum,
    core_top_k,
    lora_core,
    projected_full_spectrum,
)
from intrudim.spectral.svd import (
    dense_top_direction,
    effective_rank,
    low_rank_singular_values,
    low_rank_svd,
    singular_values,
    thin_svd,
    top_k_svd,
)
from intrudim.weights.selection import layer_index, module_type


def _k_sweep_labels(p: int, k: int, fractions: tuple[float, ...]) -> list[tuple[str, int]]:
    labels = [(f"k={k}", min(k, p))]
    labels += [(f"{round(f * 100)}%", max(1, round(f * p))) for f in fractions]
    return labels


def _finish(
    job: MatrixJob,
    config: AnalyzeConfig,
    S_t: torch.Tensor,
    max_cos: torch.Tensor,
    S0: torch.Tensor,
    frobenius_sq: float,
    delta_sigma: torch.Tensor | None,
    similarity: torch.Tensor,
    max_cos_all: torch.Tensor | None,
    lora_rank: int | None,
    update: tuple[float, torch.Tensor] | None = None,
    base_U: torch.Tensor | None = None,
) -> MatrixResult:
    ranks = intruder_ranks(max_cos, config.epsilon)
    pressure = alignment = sigma1 = None
    if update is not None and base_U is not None:
        sigma1 = update[0]
        pressure = intruder_pressure(sigma1, S0, config.k)
        alignment = update_alignment(update[1], base_U, config.k) if sigma1 > 0 else 0.0
    largest = ranks[0] if ranks else None
    k_sweep_counts = None
    if max_cos_all is not None:
        p = int(S0.shape[0])
        k_sweep_counts = {
            label: count_intruders(max_cos_all, config.epsilon, K)
            for label, K in _k_sweep_labels(p, config.k, config.k_fractions)
        }
    return MatrixResult(
        name=job.base_key,
        shape=job.shape,
        layer=layer_index(job.base_key),
        module_type=module_type(job.base_key),
        transposed=job.transpose,
        intruders=len(ranks),
        intruder_ranks=ranks,
        max_abs_cos=[float(x) for x in max_cos],
        singular_values=[float(x) for x in S_t],
        base_singular_values=[float(x) for x in S0[: config.k]],
        effective_rank_delta=None if delta_sigma is None else effective_rank(delta_sigma),
        intruder_energy_share=intruder_energy_share(S_t, ranks, frobenius_sq),
        largest_intruder_rank=largest,
        largest_intruder_sigma_ratio=None if largest is None else float(S_t[largest - 1] / S0[0]),
        epsilon_sweep=epsilon_sweep(max_cos, config.epsilons),
        k_sweep=k_sweep_counts,
        lora_rank=lora_rank,
        update_sigma1=sigma1,
        intruder_pressure=pressure,
        update_alignment=alignment,
        similarity=similarity.tolist(),
    )


def analyze_lora_matrix(
    job: MatrixJob, W0: torch.Tensor, base_svd, A: torch.Tensor, B: torch.Tensor, scale: float, config: AnalyzeConfig,
    core: LoraCore | GramCore | None = None, top: CoreTopK | None = None,
) -> MatrixResult:
    """Structured path: top-k of W₀ + s·B·A from the cached base SVD and the factors (no dense SVD). ``core``: the
    factors' core when it was built already (:func:`~intrudim.spectral.core_batch.lora_cores`, a matrix-major
    scan's batch), else built here; ``top``: its top-k when taken already (:mod:`intrudim.analysis.top_k_pool`)."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    if config.method == "dense":
        return analyze_dense_matrix(
            job, W0, base_svd, W0.to(torch.float64) + scale * (B.to(torch.float64) @ A.to(torch.float64)), config,
            delta_sigma=low_rank_singular_values(B, A, scale) if config.effective_rank else None, lora_rank=int(A.shape[0]),
        )  # fmt: skip
    if core is None:
        core = lora_core(base_svd, B, A, scale, W0=W0)  # W₀'s values are read only by a GramCore (no Vh cached)
    if top is None:
        top = core_top_k(core, config.k, device=config.device)
    max_cos = top.max_abs_cosine(core.p)
    similarity = top.Y[:n_sim].abs().T
    max_cos_all = None
    if config.k_sweep:
        full = (
            projected_full_spectrum(base_svd.U, W0, B, A, scale) if isinstance(core, GramCore)
            else core_full_spectrum(core)
        )  # fmt: skip
        max_cos_all = full.max_abs_cosine(core.p)
    update_sigma, update_U = low_rank_svd(B, A, scale)  # ΔW's spectrum: effective rank and pressure
    delta_sigma = update_sigma if config.effective_rank else None
    return _finish(
        job, config, top.S, max_cos, base_svd.S, core.frobenius_sq(), delta_sigma, similarity, max_cos_all,
        lora_rank=int(A.shape[0]), update=(float(update_sigma[0]), update_U[:, 0]), base_U=base_svd.U,
    )  # fmt: skip


def dense_spectrum(
    Wt: torch.Tensor, U0: torch.Tensor, config: AnalyzeConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Top-k left vectors and σ of a dense W_t (Lanczos; every vector for the k-sweep), their max |cos| against U₀,
    and every vector's for the k-sweep (else None). The tuned vectors do not depend on the base factors."""
    Wt_64 = Wt.to(torch.float64)
    if config.k_sweep:
        full = thin_svd(Wt_64)
        top_U, top_S = full.U[:, : config.k], full.S[: config.k]
        max_cos_all = max_abs_cosine(full.U, U0)
    else:
        top = top_k_svd(Wt_64, config.k)
        top_U, top_S = top.U, top.S
        max_cos_all = None
    return top_U, top_S, max_abs_cosine(top_U, U0), max_cos_all


def analyze_dense_matrix(
    job: MatrixJob,
    W0: torch.Tensor,
    base_svd,
    Wt: torch.Tensor,
    config: AnalyzeConfig,
    *,
    delta_sigma: torch.Tensor | None = None,
    lora_rank: int | None = None,
    spectrum: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> MatrixResult:
    """Dense path: top-k SVD of W_t (Lanczos), compared with all base left singular vectors. ``spectrum``: what
    :func:`dense_spectrum` returned for W_t and ``base_svd.U``, when it was computed already."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    U0 = base_svd.U
    W0_64, Wt_64 = W0.to(torch.float64), Wt.to(torch.float64)
    top_U, top_S, max_cos, max_cos_all = spectrum if spectrum is not None else dense_spectrum(Wt_64, U0, config)
    similarity = (top_U.T @ U0[:, :n_sim].to(torch.float64)).abs()
    if delta_sigma is None and config.effective_rank:
        delta_sigma = singular_values(Wt_64 - W0_64)
    return _finish(
        job, config, top_S, max_cos, base_svd.S, float((Wt_64**2).sum()), delta_sigma, similarity, max_cos_all,
        lora_rank=lora_rank, update=dense_top_direction(Wt_64 - W0_64), base_U=U0,
    )  # fmt: skip


def _unchanged(job: MatrixJob, base_svd, config: AnalyzeConfig) -> MatrixResult:
    """A matrix left exactly as in BASE: its top vectors are the base's own (max |cos| = 1, no intruders)."""
    k = config.k
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    p = base_svd.rank_dim
    similarity = torch.zeros(k, n_sim, dtype=torch.float64)
    idx = torch.arange(min(k, n_sim))
    similarity[idx, idx] = 1.0
    ones = torch.ones(k, dtype=torch.float64)
    return _finish(
        job, config, base_svd.S[:k], ones, base_svd.S, float((base_svd.S**2).sum()),
        torch.zeros(p, dtype=torch.float64) if config.effective_rank else None, similarity,
        torch.ones(p, dtype=torch.float64) if config.k_sweep else None, lora_rank=None,
        update=(0.0, torch.zeros(job.shape[0], dtype=torch.float64)), base_U=base_svd.U,
    )  # fmt: skip
