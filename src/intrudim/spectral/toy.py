"""The toy model of Sec. 5 and the random-vector baseline of Appendix C.

Sec. 5: for W ∈ ℝ^{n×n} and a random unit vector v, W + λ·v vᵀ with λ above σ_max(W) gets a new top
singular vector ≈ v, which is nearly orthogonal to every singular vector of W: an intruder dimension.

App. C: a unit vector can have a small max |cos| against a whole orthonormal basis of ℝⁿ. The minimum
over vectors is 1/√n (the all-equal vector); a random unit vector's max is ≈ √(2 ln(2n)/n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from intrudim.spectral.intruders import intruder_ranks, max_abs_cosine, random_vector_max_cosine
from intrudim.spectral.svd import thin_svd


@dataclass(frozen=True)
class ToyPoint:
    """One λ of the toy sweep."""

    lam: float
    lam_over_sigma_max: float
    intruders: int  # among the top-k of W + λ v vᵀ
    intruder_ranks: list[int]
    v_rank: int  # 1-based rank of the tuned vector most aligned with v
    v_alignment: float  # |cos(v, u_{v_rank})|
    v_max_cos_to_base: float  # max |cos| of that vector to every base singular vector
    top_sigma: float


@dataclass(frozen=True)
class ToySweep:
    n: int
    k: int
    epsilon: float
    sigma_max: float
    seed: int
    points: list[ToyPoint]


def random_unit_vector(n: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    return v / v.norm()


def toy_lambda_sweep(
    n: int = 768,
    lambda_ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0),
    *,
    k: int = 10,
    epsilon: float = 0.5,
    seed: int = 0,
) -> ToySweep:
    """Sweep λ = ratio·σ_max(W) for W + λ v vᵀ, W Gaussian/√n, and count intruders in the top-k (Sec. 5)."""
    if n < 2 or k < 1 or k > n:
        raise ValueError(f"need n ≥ 2 and 1 ≤ k ≤ n; got n={n}, k={k}")
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
    v = random_unit_vector(n, generator)
    base = thin_svd(W)
    sigma_max = float(base.S[0])
    points = []
    for ratio in lambda_ratios:
        lam = float(ratio) * sigma_max
        tuned = thin_svd(W + lam * torch.outer(v, v))
        top = tuned.U[:, :k]
        max_cos = max_abs_cosine(top, base.U)
        alignment = (top.T @ v).abs()
        j = int(alignment.argmax())
        ranks = intruder_ranks(max_cos, epsilon)
        points.append(
            ToyPoint(
                lam=lam, lam_over_sigma_max=float(ratio), intruders=len(ranks), intruder_ranks=ranks,
                v_rank=j + 1, v_alignment=float(alignment[j]), v_max_cos_to_base=float(max_cos[j]),
                top_sigma=float(tuned.S[0]),
            )  # fmt: skip
        )
    return ToySweep(n=n, k=k, epsilon=epsilon, sigma_max=sigma_max, seed=seed, points=points)


@dataclass(frozen=True)
class RandomBaselinePoint:
    n: int
    trials: int
    mean_max_cos: float
    std_max_cos: float
    theory: float  # √(2 ln(2n)/n)
    minimum_possible: float  # 1/√n (App. C)


def random_vector_baseline(
    ns: Sequence[int] = (16, 32, 64, 128, 256, 512, 768, 1024, 2048, 4096),
    *,
    trials: int = 200,
    seed: int = 0,
    explicit_basis_max_n: int = 1024,
) -> list[RandomBaselinePoint]:
    """Max |cos| of random unit vectors against an orthonormal basis of ℝⁿ, vs n (App. C).

    For n ≤ ``explicit_basis_max_n`` a random orthonormal basis (QR of a Gaussian) is used; above it the
    standard basis, which gives the same distribution because a random unit vector is rotation invariant.
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in ns:
        vectors = torch.randn(n, trials, generator=generator, dtype=torch.float64)
        vectors = vectors / vectors.norm(dim=0, keepdim=True)
        if n <= explicit_basis_max_n:
            basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
            values = max_abs_cosine(vectors, basis)
        else:
            values = vectors.abs().amax(dim=0)
        out.append(
            RandomBaselinePoint(
                n=int(n), trials=trials, mean_max_cos=float(values.mean()), std_max_cos=float(values.std()),
                theory=random_vector_max_cosine(int(n)), minimum_possible=1.0 / math.sqrt(n),
            )  # fmt: skip
        )
    return out
