"""Repair: scale the intruders' singular values (the v2 intervention) and its two controls.

For intruders I among the top-k of W_t = W₀ + ΔW (same definition as ``analyze``),

    W' = W_t + (λ − 1) · Σ_{j∈I} σ_j u_j v_jᵀ.

The update is a rank-|I| matrix R = L·Rtᵀ with L = U_I·diag((λ−1)σ_I) (out, |I|) and Rt = V_I (in, |I|); it
is written exactly, as extra LoRA columns (rank r + |I|) or merged, never truncated back to rank r.
u_j, v_j, σ_j come from the structured top-k of the LoRA core (no dense SVD of W_t), or a top-k Lanczos
SVD for dense fine-tuned matrices.

Controls (DESIGN.md), so that a user sees whether the effect is specific to intruders:
- ``non-intruder``: the same number of the top non-intruder singular directions scaled by λ;
- ``shrink``: W₀ + c·ΔW with c chosen so that ‖W' − W_t‖_F equals what the intruder repair removes,
  |λ − 1|·(Σ_{j∈I} σ_j²)^½ (the u_j and v_j are orthonormal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from intrudim.spectral.structured import GramCore, core_right_vectors, core_top_k, lora_core
from intrudim.spectral.svd import SVDFactors, low_rank_singular_values, top_k_svd

CONTROLS: tuple[str, ...] = ("none", "non-intruder", "shrink")
"""``none`` scales the intruders themselves; the others are the controls."""


@dataclass(frozen=True)
class SingularTriplets:
    """Top singular triplets of a tuned matrix W_t (float64): U (out, k), S (k,), V (in, k), and max |cos| (k,)
    of each left vector against every base left singular vector."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    max_cos: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.S.shape[0])


def lora_top_triplets(
    base: SVDFactors,
    B: torch.Tensor,
    A: torch.Tensor,
    scale: float,
    k: int,
    *,
    device: str = "cpu",
    W0: torch.Tensor | None = None,
) -> SingularTriplets:
    """Top-k triplets of W₀ + scale·B·A from the base SVD and the factors (structured: no dense SVD of W_t).

    ``device``: where the core's top-k is solved (:func:`~intrudim.spectral.structured.core_top_k`). ``W0``: the
    base matrix, needed when ``base`` has no right vectors (a :class:`~intrudim.spectral.structured.GramCore`);
    the right vectors are then v_j = W_tᵀu_j/σ_j = (W₀ᵀu_j + scale·Aᵀ(Bᵀu_j))/σ_j."""
    core = lora_core(base, B, A, scale, W0=W0)
    top = core_top_k(core, k, device=device)
    p = core.p
    U = base.U.to(torch.float64) @ top.Y[:p]
    if isinstance(core, GramCore):
        assert W0 is not None
        Vt = W0.to(torch.float64).T @ U + scale * (A.to(torch.float64).T @ (B.to(torch.float64).T @ U))
        V = Vt / top.S.clamp_min(torch.finfo(torch.float64).tiny)[None, :]
        return SingularTriplets(U=U, S=top.S.to(torch.float64), V=V, max_cos=top.max_abs_cosine(p))
    X = core_right_vectors(core, top)  # (p + r_A, k)
    if core.Q_out is not None:
        U = U + core.Q_out @ top.Y[p:]
    V = base.Vh.to(torch.float64).T @ X[:p]
    if core.Q_in is not None:
        V = V + core.Q_in @ X[p:]
    return SingularTriplets(U=U, S=top.S.to(torch.float64), V=V, max_cos=top.max_abs_cosine(p))


def dense_top_triplets(Wt: torch.Tensor, U0: torch.Tensor, k: int) -> SingularTriplets:
    """Top-k triplets of a dense W_t (Lanczos unless small), with max |cos| against the base's U₀."""
    top = top_k_svd(Wt, k)
    max_cos = (U0.to(torch.float64).T @ top.U).abs().amax(dim=0)
    return SingularTriplets(U=top.U, S=top.S, V=top.Vh.T, max_cos=max_cos)


def intruder_indices(max_cos: torch.Tensor, epsilon: float, k: int) -> list[int]:
    """0-based indices j < k with max |cos| < ε (the intruders; ``analyze``'s ranks minus one)."""
    return [int(j) for j in torch.nonzero(max_cos[:k] < epsilon).flatten().tolist()]


def control_indices(max_cos: torch.Tensor, epsilon: float, k: int) -> list[int]:
    """The ``non-intruder`` control: as many of the top non-intruder directions as there are intruders in top-k.

    ``max_cos`` must cover at least k + |I| vectors so that enough non-intruders exist.
    """
    n = len(intruder_indices(max_cos, epsilon, k))
    intruders = set(intruder_indices(max_cos, epsilon, k))
    chosen = [j for j in range(int(max_cos.shape[0])) if j not in intruders][:n]
    if len(chosen) < n:
        raise ValueError(f"need {n} non-intruder directions but only {len(chosen)} were computed")
    return chosen


@dataclass(frozen=True)
class RankUpdate:
    """R = left @ rightᵀ: left (out, m), right (in, m), float64. m = 0 means no change."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def dense(self) -> torch.Tensor:
        return self.left @ self.right.T


def scaled_directions_update(triplets: SingularTriplets, indices: list[int], lam: float) -> RankUpdate:
    """(λ − 1)·Σ_{j∈indices} σ_j u_j v_jᵀ as factors: after it, those singular values are λσ_j."""
    idx = torch.tensor(indices, dtype=torch.long)
    left = triplets.U[:, idx] * ((lam - 1.0) * triplets.S[idx])[None, :]
    return RankUpdate(left=left, right=triplets.V[:, idx])


def removed_norm(triplets: SingularTriplets, indices: list[int], lam: float) -> float:
    """‖(λ − 1)·Σ_{j∈indices} σ_j u_j v_jᵀ‖_F = |λ − 1|·(Σ σ_j²)^½ (orthonormal u_j, v_j)."""
    if not indices:
        return 0.0
    sigma = triplets.S[torch.tensor(indices, dtype=torch.long)]
    return abs(lam - 1.0) * float(torch.sqrt((sigma**2).sum()))


def shrink_factor(delta_norm: float, target_removed: float) -> tuple[float, bool]:
    """c in W₀ + c·ΔW with ‖(1 − c)·ΔW‖_F = target_removed; (c, matched). c is clipped to [0, 1]: when the
    intruder repair removes more than ‖ΔW‖_F, the shrink removes all of ΔW and ``matched`` is False."""
    if delta_norm <= 0.0:
        return 1.0, target_removed == 0.0
    c = 1.0 - target_removed / delta_norm
    if c < 0.0:
        return 0.0, False
    return c, True


def extend_lora_factors(
    B: torch.Tensor, A: torch.Tensor, scale: float, update: RankUpdate
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (B', A') of rank r + m with scale·B'·A' = scale·B·A + R, exactly (float64).

    B' = [B, left/scale] (out, r + m), A' = [A; rightᵀ] (r + m, in): the original columns are kept as they
    are and the repair is appended, so nothing of the adapter is truncated.
    """
    B64, A64 = B.to(torch.float64), A.to(torch.float64)
    B_new = torch.cat([B64, update.left / scale], dim=1)
    A_new = torch.cat([A64, update.right.T], dim=0)
    return B_new, A_new


def lora_delta_norm(B: torch.Tensor, A: torch.Tensor, scale: float) -> float:
    """‖scale·B·A‖_F: the 2-norm of its singular values (two thin QRs, never forming B·A)."""
    return float(torch.linalg.vector_norm(low_rank_singular_values(B, A, scale)))


def alpha_for_scale(scale: float, rank: int, use_rslora: bool) -> float:
    """The LoRA α that gives ``scale`` at ``rank`` (α/r, or α/√r with rsLoRA)."""
    return scale * (math.sqrt(rank) if use_rslora else rank)


METHOD_LABELS = {"none": "intruders", "non-intruder": "non-intruder control", "shrink": "shrink control"}


METHOD_DESCRIPTIONS = {
    "none": "the intruders' singular values scaled by λ: W' = W_t + (λ − 1)·Σ σⱼ uⱼ vⱼᵀ over the intruders j (the v2 intervention)",
    "non-intruder": "control: as many of the top non-intruder singular directions of W_t scaled by λ (mostly the "
    "base's own top directions), to see whether the effect is specific to intruders",
    "shrink": "control: W₀ + c·ΔW with c per matrix chosen to remove the same Frobenius norm as the intruder "
    "repair (c = 0 when that is more than the Frobenius norm of ΔW), to see whether removing any equal part of the update does as much",
}
