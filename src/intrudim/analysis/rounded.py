"""A matrix analysed from half-precision cached factors: its result when every decision is certified, else None.

"Exact where it decides" (issue 28): a half-precision cache (``cache_dtype="float16"``/``"bfloat16"``) gives each
tuned vector's max |cos| with a certified band (:mod:`intrudim.spectral.rounding` for a dense tuned matrix,
:mod:`intrudim.spectral.rounded_core` for the structured LoRA path, whose band also covers the rank order and the
top-k membership). A matrix is decided here only if no max |cos| lies within its band of any threshold a count
uses: ε and every ε of the sweep for the top k, ε for every vector of the k-sweep (a LoRA matrix with the k-sweep
is always re-decided: it needs every tuned vector, down to the near ties at the bottom). Otherwise the caller
(:func:`intrudim.analysis.jobs.analyze_read`) re-decides it with a float64 SVD of the base matrix, as ``--no-cache``
computes it, and marks the result ``redecided``. Counts, ranks and sweeps therefore equal ``--no-cache``'s.
"""

from __future__ import annotations

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.matrix import _finish, analyze_dense_matrix, dense_spectrum
from intrudim.analysis.planning import MatrixJob
from intrudim.analysis.results import MatrixResult
from intrudim.spectral.rounded_core import rounded_lora_spectrum
from intrudim.spectral.rounding import cosine_error_bound
from intrudim.spectral.svd import SVDFactors, low_rank_singular_values, low_rank_svd


def decisions_certain(max_cos: torch.Tensor, band: torch.Tensor, thresholds: tuple[float, ...]) -> bool:
    """True when every |max_cos_j − t| exceeds band_j for every threshold t (and every band is finite)."""
    for value, width in zip(max_cos.tolist(), band.tolist(), strict=True):
        if not width < float("inf") or any(abs(value - t) <= width for t in thresholds):
            return False
    return True


def _certain(config: AnalyzeConfig, max_cos: torch.Tensor, band: torch.Tensor, max_cos_all: torch.Tensor | None,
             band_all: torch.Tensor | None) -> bool:  # fmt: skip
    thresholds = tuple(sorted({float(config.epsilon), *(float(e) for e in config.epsilons)}))
    if not decisions_certain(max_cos, band, thresholds):
        return False
    if max_cos_all is not None and band_all is not None:
        return decisions_certain(max_cos_all, band_all, (float(config.epsilon),))
    return True


def analyze_rounded_lora(
    job: MatrixJob, W0: torch.Tensor, base_svd: SVDFactors, A: torch.Tensor, B: torch.Tensor, scale: float,
    config: AnalyzeConfig,
) -> MatrixResult | None:  # fmt: skip
    """The structured LoRA path from rounded factors (``method="dense"``: the merged matrix's dense path), or None
    when a decision is not certified."""
    if config.method == "dense":
        Wt = W0.to(torch.float64) + scale * (B.to(torch.float64) @ A.to(torch.float64))
        delta_sigma = low_rank_singular_values(B, A, scale) if config.effective_rank else None
        return analyze_rounded_dense(job, W0, base_svd, Wt, config, delta_sigma=delta_sigma, lora_rank=int(A.shape[0]))
    if config.k_sweep:
        return None  # every tuned vector, down to the near-ties at the bottom: decided with float64 factors
    p = base_svd.rank_dim
    spectrum = rounded_lora_spectrum(base_svd, W0, B, A, scale, config.k, device=config.device)
    max_cos = spectrum.max_abs_cosine()
    if not _certain(config, max_cos, spectrum.band, None, None):
        return None
    n_sim = min(config.similarity_size, p)
    update_sigma, update_U = low_rank_svd(B, A, scale)
    return _finish(
        job, config, spectrum.S, max_cos, base_svd.S, spectrum.frobenius_sq,
        update_sigma if config.effective_rank else None, spectrum.Y[:n_sim].abs().T, None, lora_rank=int(A.shape[0]),
        update=(float(update_sigma[0]), update_U[:, 0]), base_U=base_svd.U,
    )  # fmt: skip


def analyze_rounded_dense(
    job: MatrixJob, W0: torch.Tensor, base_svd: SVDFactors, Wt: torch.Tensor, config: AnalyzeConfig,
    *, delta_sigma: torch.Tensor | None = None, lora_rank: int | None = None,
) -> MatrixResult | None:  # fmt: skip
    """The dense path with rounded U₀, or None when a decision is not certified. The tuned vectors come from W_t
    alone, so each max |cos| is within β of --no-cache's (:func:`~intrudim.spectral.rounding.cosine_error_bound`)."""
    assert base_svd.rounding is not None
    spectrum = dense_spectrum(Wt, base_svd.U, config)
    beta = cosine_error_bound(base_svd.rounding.U, int(base_svd.U.shape[0]))
    _, _, max_cos, max_cos_all = spectrum
    band = torch.full_like(max_cos, beta)
    band_all = None if max_cos_all is None else torch.full_like(max_cos_all, beta)
    if not _certain(config, max_cos, band, max_cos_all, band_all):
        return None
    return analyze_dense_matrix(job, W0, base_svd, Wt, config, delta_sigma=delta_sigma, lora_rank=lora_rank,
                                spectrum=spectrum)  # fmt: skip
