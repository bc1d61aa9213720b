"""Intruder dimensions (Sec. 3, Definition 1, Fig. 4) and the measures built on them.

A tuned left singular vector u_j (j < k) is an intruder iff max_i |cos(u_j, u_i^base)| < ε, the maximum
taken over *all* base left singular vectors (the thin U₀ of W₀). Ranks are 1-based: rank 1 is the
vector with the largest singular value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

EPSILON_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
K_SWEEP_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


def max_abs_cosine(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """max_i |⟨v_j, b_i⟩| for unit columns v_j of ``vectors`` (m, k) against orthonormal columns of ``basis`` (m, p)."""
    return (basis.T.to(torch.float64) @ vectors.to(torch.float64)).abs().amax(dim=0)


def intruder_ranks(max_cos: torch.Tensor, epsilon: float) -> list[int]:
    """1-based ranks j of the vectors whose max |cos| to the base basis is below ε."""
    return [int(j) + 1 for j in torch.nonzero(max_cos < epsilon).flatten().tolist()]


def count_intruders(max_cos: torch.Tensor, epsilon: float, k: int | None = None) -> int:
    """Number of intruders among the first ``k`` vectors (all given vectors if k is None)."""
    values = max_cos if k is None else max_cos[:k]
    return int((values < epsilon).sum())


def epsilon_sweep(max_cos: torch.Tensor, epsilons: Sequence[float] = EPSILON_SWEEP) -> dict[float, int]:
    """Intruder count for each threshold ε over the given top-k vectors (Fig. 5)."""
    return {float(eps): count_intruders(max_cos, eps) for eps in epsilons}


def k_sweep(max_cos_all: torch.Tensor, epsilon: float, ks: Sequence[int]) -> dict[int, int]:
    """Intruder count among the top-K tuned vectors, for each K (Fig. 11); needs max |cos| for ≥ max(ks) vectors."""
    return {int(K): count_intruders(max_cos_all, epsilon, K) for K in ks}


def intruder_energy_share(singular_values: torch.Tensor, ranks: Sequence[int], frobenius_sq: float) -> float:
    """Σ_{j∈I} σ_j² / ‖W_t‖_F²: the share of the tuned matrix's energy carried by its intruders."""
    if not ranks or frobenius_sq <= 0:
        return 0.0
    idx = torch.tensor([r - 1 for r in ranks])
    return float((singular_values.to(torch.float64)[idx] ** 2).sum() / frobenius_sq)


def random_vector_max_cosine(n: int) -> float:
    """Expected max |cos| of a random unit vector in ℝⁿ against an orthonormal basis ≈ √(2 ln(2n)/n) (App. C)."""
    return math.sqrt(2.0 * math.log(2.0 * n) / n)


def intruder_pressure(update_sigma1: float, base_sigma: torch.Tensor, k: int) -> float:
    """σ₁(ΔW) / σ_k(W₀): how large the update's top direction is against the k-th base singular value.

    Sec. 5's toy model: a rank-one update λ·v vᵀ becomes a top-k vector of its own once λ passes the base's
    singular values near rank k; a pressure well above 1 predicts an intruder in the top k, unless the update
    lies in the base's top space (see :func:`update_alignment`).
    """
    index = min(k, int(base_sigma.shape[0])) - 1
    floor = float(base_sigma[index])
    return float(update_sigma1) / floor if floor > 0 else float("inf")


def update_alignment(update_u1: torch.Tensor, base_U: torch.Tensor, k: int) -> float:
    """‖U₀[:, :k]ᵀ u₁(ΔW)‖: the share (in norm, 0…1) of the update's top left singular vector that lies in the
    span of the base's top-k left singular vectors; near 0 means the update points somewhere new."""
    top = base_U[:, :k].to(torch.float64)
    return float(torch.linalg.vector_norm(top.T @ update_u1.to(torch.float64)))
