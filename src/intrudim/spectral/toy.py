"""The toy model of Sec. 5 and the random-vector baseline of Appendix C.

Sec. 5 argues that for W ∈ ℝ^{n×n} and a random unit vector v, W + λ·v vᵀ with λ *greater than σ_max(W)*
gets a new top singular vector ≈ v, nearly orthogonal to every singular vector of W: an intruder dimension.
λ > σ_max is a sufficient condition, not the threshold. The sweep measures two things for each λ:

- the intruders of the paper's definition: top-k left singular vectors of W + λ v vᵀ whose max |cos| to every
  left singular vector of W is below ε (Sec. 3);
- the rank of v's direction: the 1-based rank, among *all* n left singular vectors of W + λ v vᵀ, of the one
  most aligned with v; it counts as v's direction once |cos| with v ≥ 1/√2 (more than half of it is v).

and reports the smallest λ/σ_max of the sweep at which each happens (:attr:`ToySweep.first_intruder_ratio`,
:attr:`ToySweep.v_top_ratio`). For the default Gaussian W (entries N(0, 1/n), σ_max ≈ 2) random-matrix theory
(Benaych-Georges & Nadakuditi 2012) puts the threshold at λ = 1 ≈ σ_max/2: above it the spike leaves the bulk
of the spectrum, becomes the top singular value (1 + λ²)/λ, and its vector has |cos| → √(1 − 1/λ²) with v. So
intruders appear from about λ = 0.5·σ_max, well before σ_max; the tool reports what it finds.

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

LAMBDA_RATIOS: tuple[float, ...] = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
# A tuned vector "is v's direction" when more than half of it lies along v: |cos(u, v)| ≥ 1/√2.
V_DIRECTION_MIN_COS = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class ToyPoint:
    """One λ of the toy sweep."""

    lam: float
    lam_over_sigma_max: float
    intruders: int  # among the top-k of W + λ v vᵀ (max |cos| to every left singular vector of W < ε)
    intruder_ranks: list[int]
    v_rank: int  # 1-based rank, among all n left singular vectors of W + λ v vᵀ, of the one most aligned with v
    v_alignment: float  # |cos(v, u_{v_rank})|
    v_max_cos_to_base: float  # max |cos| of that vector to every left singular vector of W
    v_is_intruder: bool  # v's vector is in the top-k and its max |cos| to W's vectors is below ε
    top_sigma: float
    v_alignment_theory: float | None  # n → ∞ limit √(1 − 1/λ²) for λ > 1 (0 below); Gaussian W only


@dataclass(frozen=True)
class ToySweep:
    """The λ sweep of Sec. 5 and the thresholds it finds (smallest λ/σ_max of the sweep, None if never)."""

    n: int
    k: int
    epsilon: float
    sigma_max: float
    seed: int
    points: list[ToyPoint]
    first_intruder_ratio: float | None  # smallest λ/σ_max with ≥ 1 intruder among the top-k
    v_intruder_ratio: float | None  # smallest λ/σ_max from which v's direction is an intruder (for every larger λ)
    v_top_ratio: float | None  # smallest λ/σ_max from which v's direction is rank 1 (for every larger λ)
    v_direction_min_cos: float  # |cos(u, v)| at which a tuned vector u counts as v's direction
    spike_threshold_ratio_theory: float | None  # 1/σ_max: λ = 1 in units of the Gaussian W (None for a given W)
    gaussian: bool  # W was the default Gaussian/√n matrix


def random_unit_vector(n: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    return v / v.norm()


def first_ratio(points: Sequence[ToyPoint], holds, *, from_then_on: bool = False) -> float | None:
    """Smallest λ/σ_max of ``points`` where ``holds(point)``; with ``from_then_on``, where it holds for every larger λ."""
    ordered = sorted(points, key=lambda p: p.lam_over_sigma_max)
    if not from_then_on:
        return next((p.lam_over_sigma_max for p in ordered if holds(p)), None)
    found = None
    for p in reversed(ordered):
        if not holds(p):
            break
        found = p.lam_over_sigma_max
    return found


def toy_lambda_sweep(
    n: int = 768,
    lambda_ratios: Sequence[float] = LAMBDA_RATIOS,
    *,
    k: int = 10,
    epsilon: float = 0.5,
    seed: int = 0,
    W: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> ToySweep:
    """Sweep λ = ratio·σ_max(W) for W + λ v vᵀ and measure intruders and v's rank at each λ (Sec. 5).

    ``W`` defaults to an n×n Gaussian matrix with entries N(0, 1/n) and ``v`` to a random unit vector (both from
    ``seed``); pass them to plant a case with a known answer. The returned sweep carries the thresholds found.
    """
    if W is not None:
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise ValueError(f"W must be square (n, n); got shape {tuple(W.shape)}")
        n = int(W.shape[0])
    if n < 2 or k < 1 or k > n:
        raise ValueError(f"need n ≥ 2 and 1 ≤ k ≤ n; got n={n}, k={k}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = W is None
    if W is None:
        W = torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
    W = W.to(torch.float64)
    if v is None:
        v = random_unit_vector(n, generator)
    if v.shape != (n,):
        raise ValueError(f"v must have shape ({n},); got {tuple(v.shape)}")
    v = v.to(torch.float64) / v.to(torch.float64).norm()
    base = thin_svd(W)
    sigma_max = float(base.S[0])
    points = []
    for ratio in lambda_ratios:
        lam = float(ratio) * sigma_max
        tuned = thin_svd(W + lam * torch.outer(v, v))
        max_cos_all = max_abs_cosine(tuned.U, base.U)  # (n,)
        alignment = (tuned.U.T @ v).abs()
        j = int(alignment.argmax())
        ranks = intruder_ranks(max_cos_all[:k], epsilon)
        theory = (math.sqrt(1.0 - 1.0 / lam**2) if lam > 1.0 else 0.0) if gaussian else None
        points.append(
            ToyPoint(
                lam=lam, lam_over_sigma_max=float(ratio), intruders=len(ranks), intruder_ranks=ranks,
                v_rank=j + 1, v_alignment=float(alignment[j]), v_max_cos_to_base=float(max_cos_all[j]),
                v_is_intruder=(j + 1) in ranks, top_sigma=float(tuned.S[0]), v_alignment_theory=theory,
            )  # fmt: skip
        )

    def is_v(p: ToyPoint) -> bool:
        return p.v_alignment >= V_DIRECTION_MIN_COS

    return ToySweep(
        n=n, k=k, epsilon=epsilon, sigma_max=sigma_max, seed=seed, points=points,
        first_intruder_ratio=first_ratio(points, lambda p: p.intruders > 0),
        v_intruder_ratio=first_ratio(points, lambda p: p.v_is_intruder and is_v(p), from_then_on=True),
        v_top_ratio=first_ratio(points, lambda p: p.v_rank == 1 and is_v(p), from_then_on=True),
        v_direction_min_cos=V_DIRECTION_MIN_COS,
        spike_threshold_ratio_theory=(1.0 / sigma_max) if gaussian else None, gaussian=gaussian,
    )  # fmt: skip


def toy_findings(sweep: ToySweep) -> list[str]:
    """What the sweep found, in words (the CLI, toy.json and toy.html print the same sentences)."""

    def at(ratio: float | None, what: str) -> str:
        return f"{what} from λ = {ratio:g}·σ_max" if ratio is not None else f"{what}: at no λ of this sweep"

    lines = [
        at(sweep.first_intruder_ratio, f"Intruders (top-{sweep.k} vectors with max |cos| < ε={sweep.epsilon} to every "
                                       f"singular vector of W) appear")
        + ".",
        at(sweep.v_top_ratio, f"v's direction (|cos| with v ≥ {sweep.v_direction_min_cos:.3f}) is the top singular "
                              f"vector") + "; "
        + at(sweep.v_intruder_ratio, "it is itself an intruder") + ".",
        "Sec. 5 argues λ > σ_max suffices; it is not the threshold.",
    ]
    if sweep.spike_threshold_ratio_theory is not None:
        lines[-1] += (
            f" For this Gaussian W, theory puts the threshold at λ = 1 = {sweep.spike_threshold_ratio_theory:.2f}·σ_max "
            f"(the spike leaves the bulk; Benaych-Georges & Nadakuditi 2012)."
        )
    return lines


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
