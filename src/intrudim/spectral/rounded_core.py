"""The structured top-k of W_t = W₀ + s·B·A from half-precision base factors, with a certified band per vector.

The stored factors are Ũ₀ = U₀ + D_U and, for a tall W₀, Ṽ₀ = V₀ + D_V, with ‖D‖₂ ≤ ρ and columns within κ
(:mod:`intrudim.spectral.rounding`). Every product with them runs in float64, on a float64 copy of the matrix analysed.

**1. The half-precision spectrum.** Two small symmetric eigenproblems, both diagonal plus rank 2r (a
:class:`~intrudim.spectral.structured.GramCore`), give the top tuned vectors in base coordinates, without V₀ on the
left or a basis of B's residual on the right:

- wide or square W₀ (p = out; U₀ square orthogonal): the left Gram matrix
  N = U₀ᵀW_tW_tᵀU₀ = Σ₀² + C B̃ᵀ + B̃ Cᵀ + B̃ G B̃ᵀ with B̃ = s·U₀ᵀB, C = U₀ᵀ(W₀Aᵀ), G = AAᵀ;
- tall W₀ (p = in < out; V₀ square orthogonal): the right Gram matrix
  N = V₀ᵀW_tᵀW_tV₀ = Σ₀² + (Σ₀B̃)Ã + Ãᵀ(Σ₀B̃)ᵀ + Ãᵀ(s²BᵀB)Ã with Ã = AV₀ (B's part outside span(U₀) enters only
  through BᵀB).

Both have the eigenvalues σ_j² of W_t. The rounding enters mostly as a change of basis: Ũ₀ = U₀(I + F) with
‖F‖₂ = ‖D_U‖₂ ≤ ρ (U₀ square), so Ũ₀ᵀW_tW_tᵀŨ₀ = (I + F)ᵀN(I + F), whose eigenvalues are those of N times factors in
[(1 − ρ)², (1 + ρ)²] (Ostrowski); likewise Ṽ₀ = V₀(I + F_V) on the right. What Ñ, as computed, adds to that:

- left: Σ₀² where (I + F)ᵀΣ₀²(I + F) belongs, at most (2ρ + ρ²)σ₁², and the float64 accumulation of
  B̃ = s·Ũ₀ᵀB, C = Ũ₀ᵀ(W₀Aᵀ) (W₀Aᵀ's own rounding, γ_in‖W₀‖_F‖A‖_F, included) and G, carried through the products;
- right: the same (2ρ_V + ρ_V²)σ₁², and in the cross term Σ₀B̃Ã against (I + F_V)ᵀΣ₀B*Ã the error of B̃ = s·Ũ₀ᵀB
  (ρ_U‖sB‖₂ plus accumulation, :func:`~intrudim.spectral.rounding.product_error`) and F_V:
  2σ₁(‖ΔB̃‖‖Ã‖ + ‖B*‖(‖ΔÃ‖ + ρ_V‖Ã*‖)), plus the accumulation in ÃᵀHÃ.

Call the sum ν; with the eigensolver's largest residual on Ñ and ς, a generous allowance for float64 eigensolvers
(this one's and --no-cache's own: 64·(out + in + r)·2⁻⁵³·λ̃₁), w = ν + residual + ς, and every exact eigenvalue
lies in [(λ̃_i − w)/(1 + ρ)², (λ̃_i + w)/(1 − ρ)²] (Weyl, then Ostrowski; the eigensolver is taken to return Ñ's
top eigenvalues, as every path assumes of ARPACK). The bound scales with σ₁(W₀)², not with the update.

**2. The tuned vectors, refined on the exact matrix.** The approximate left vectors in the output space (Ũ₀ỹ_j
followed by one power step W_tW_tᵀ, which damps the rounding's spread over the whole spectrum; for a tall matrix
W_t·Ṽ₀z̃_j) span a subspace on which a Rayleigh–Ritz step of the exact W_tW_tᵀ runs, with W₀ itself (read from the
base file) and the factors in float64: Ritz pairs (θ_j, x_j) with computed residuals r_j = ‖W_tW_tᵀx_j − θ_jx_j‖.
For any unit x, ‖(A − θ)x‖² ≥ Σ_{i≠j} c_i²(λ_i − θ)² ≥ δ²·sin²∠(x, y_j) (Davis–Kahan for one vector), so with δ_j
a lower bound on the distance from θ_j to every exact eigenvalue but the j-th, sin θ_j ≤ (r_j + ς)/δ_j and
‖x_j ∓ u_j‖ ≤ √2 sin θ_j for the exact j-th tuned vector u_j (no bound when δ_j ≤ 0: a near tie). By Kahan's
theorem (Parlett, *The Symmetric Eigenvalue Problem*, Thm. 11.5.1) the t Ritz values are each within ‖R‖₂ (the
residual block's norm) of t distinct exact eigenvalues; these are the top t, index for index, when
θ_t − ‖R‖₂ > high_{t+1} (the upper end of λ_{t+1}'s interval), since any other choice holds one at most λ_{t+1} (one
half eigenvalue more is computed for this). Then

    δ_j = min( min over i ≠ j of |θ_j − θ_i| − ‖R‖₂,  θ_j − high_{t+1} ),

and otherwise, from the intervals alone, δ_j = the distance from θ_j to every other interval (and to high_last for
the eigenvalues never computed).

**3. The cosines.** cos(x_j, u_i^base) is computed as (Ũ₀ᵀx_j)_i, within β of U₀ᵀx_j entry by entry
(:func:`~intrudim.spectral.rounding.cosine_error_bound`), so each max |cos| is within

    band_j = β + √2·sin θ_j

of the exact one, and of --no-cache's. A finite band also certifies that x_j approximates the exact j-th vector and
no other: the rank order, the top-k membership (δ_k sees the (k+1)-th eigenvalue) and ties near them are covered.
The extra cost over the float32 path is a float64 copy of W₀ and five float64 products of it with k + 1 or r
vectors (three for a tall matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from intrudim.spectral.rounding import (
    FLOAT64_UNIT_ROUNDOFF,
    accumulation_error,
    cosine_error_bound,
    gamma,
    product_error,
    rounded_transpose_product,
    spectral_norm,
)
from intrudim.spectral.structured import GramCore, core_top_k
from intrudim.spectral.svd import SVDFactors


@dataclass(frozen=True)
class CertifiedSpectrum:
    """Top tuned singular values S (count,), left vectors in base coordinates Y (p, count) and, per vector, a band
    (count,): the largest |cos| of vector j is within ``band[j]`` of what --no-cache computes (inf: not certified)."""

    S: torch.Tensor
    Y: torch.Tensor  # (p, count): (Ũ₀ᵀx_j)_i, the cosines with every base vector
    band: torch.Tensor
    frobenius_sq: float  # ‖W_t‖_F² (the trace of Ñ)

    def max_abs_cosine(self) -> torch.Tensor:
        return self.Y.abs().amax(dim=0)


def _base_times(W0: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """W₀X in float64 (W₀ already float64)."""
    return W0 @ X


def _perturbation(dC: float, C: float, dB: float, B: float, G: float, dG: float) -> float:
    """A bound on the change of Σ² + C Bᵀ + B Cᵀ + B G Bᵀ when C, B and G (of norms C, B, G) are off by at most dC,
    dB and dG."""
    C_exact, B_exact = C + dC, B + dB
    return 2 * (dC * B + C_exact * dB) + dB * G * (B + B_exact) + B_exact**2 * dG


def _left_gram(
    base: SVDFactors, W0: torch.Tensor, B64: torch.Tensor, A64: torch.Tensor, scale: float
) -> tuple[GramCore, float, float]:
    """The left Gram matrix Ñ of a wide or square W_t from Ũ₀ and W₀, with ν and ρ (module docstring)."""
    rounding = base.rounding
    assert rounding is not None
    U, shape, rho = base.U, tuple(base.U.shape), rounding.U.spectral
    S = base.S.to(torch.float64)
    sB = scale * B64
    Bt = rounded_transpose_product(U, sB)  # (p, r): s·Ũ₀ᵀB
    WA = _base_times(W0, A64.T)  # (out, r)
    W0_frobenius = float(W0.norm()) * (1 + 1e-12)
    dWA = gamma(int(W0.shape[1]), FLOAT64_UNIT_ROUNDOFF) * W0_frobenius * float(A64.norm())
    C = rounded_transpose_product(U, WA)  # (p, r): Ũ₀ᵀW₀Aᵀ
    G = A64 @ A64.T
    dB = accumulation_error(rounding.U, shape, sB)
    dC = accumulation_error(rounding.U, shape, WA) + (1 + rho) * dWA
    dG = gamma(int(A64.shape[1]), FLOAT64_UNIT_ROUNDOFF) * float(A64.norm()) ** 2
    sigma1_sq = float(S[0]) ** 2
    nu = (2 * rho + rho**2) * sigma1_sq + _perturbation(dC, spectral_norm(C), dB, spectral_norm(Bt), spectral_norm(G), dG)
    return GramCore(S0=S, B_coords=Bt, C=C, AAt=G, p=int(S.shape[0])), nu, rho


def _right_gram(
    base: SVDFactors, B64: torch.Tensor, A64: torch.Tensor, scale: float
) -> tuple[GramCore, float, float]:
    """The right Gram matrix Ñ of a tall W_t from Ũ₀ and Ṽ₀ (no W₀), with ν and ρ (module docstring)."""
    rounding = base.rounding
    assert rounding is not None and rounding.V is not None and base.Vh is not None
    U, V = base.U, base.Vh.T  # (out, p), (in, p)
    rho = rounding.V.spectral
    S = base.S.to(torch.float64)
    sigma1 = float(S[0])
    sB = scale * B64
    Bt = rounded_transpose_product(U, sB)  # (p, r): s·Ũ₀ᵀB
    At = rounded_transpose_product(V, A64.T)  # (p, r): (A Ṽ₀)ᵀ
    H = sB.T @ sB  # (r, r): s²BᵀB
    dB = product_error(rounding.U, tuple(U.shape), sB)  # from U₀ᵀB: D_U and the accumulation
    dA = accumulation_error(rounding.V, tuple(V.shape), A64.T)  # from AṼ₀ (D_V is the multiplicative part)
    dH = gamma(int(sB.shape[0]), FLOAT64_UNIT_ROUNDOFF) * float(sB.norm()) ** 2
    norm_A, norm_B, norm_H = spectral_norm(At), spectral_norm(Bt), spectral_norm(H)
    B_exact = norm_B + dB
    cross = sigma1 * (dB * norm_A + B_exact * (dA + rho * (norm_A + dA)))  # Σ₀B̃Ã against (I+F)ᵀΣ₀B*Ã
    quadratic = dA * norm_H * (2 * norm_A + dA) + (norm_A + dA) ** 2 * dH
    nu = (2 * rho + rho**2) * sigma1**2 + 2 * cross * (1 + 4 * FLOAT64_UNIT_ROUNDOFF) + quadratic
    return GramCore(S0=S, B_coords=At, C=S[:, None] * Bt, AAt=H, p=int(S.shape[0])), nu, rho


def _tuned_times(W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """W_t X = W₀X + B(AX) in float64 (W₀ float64, B already scaled by s)."""
    return W0 @ X + B @ (A @ X)


def _tuned_transpose_times(W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """W_tᵀQ = W₀ᵀQ + Aᵀ(BᵀQ) in float64, written as (QᵀW₀)ᵀ (the faster form in torch)."""
    return (Q.T @ W0).T + A.T @ (B.T @ Q)


def rounded_lora_spectrum(
    base: SVDFactors, W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float, count: int,
    *, device: str = "cpu",
) -> CertifiedSpectrum:  # fmt: skip
    """The top ``count`` singular values and left vectors (base coordinates) of W₀ + scale·B·A from rounded base
    factors (``base.rounding`` set), each with its certified band (module docstring)."""
    rounding = base.rounding
    assert rounding is not None
    p = int(base.S.shape[0])
    if count > p:
        raise ValueError(f"k={count} exceeds the number of singular values ({p}).")
    B64, A64 = B.to(torch.float64), A.to(torch.float64)
    sB = scale * B64
    # One float64 copy each of W₀ and the stored factors (bf16, float16 and float32 values are exact in it), for the
    # products below: one matrix at a time, as large as a float64 base SVD of it.
    W0 = W0.to(torch.float64)
    Vh = None if base.Vh is None else base.Vh.to(torch.float64)
    base = SVDFactors(U=base.U.to(torch.float64), S=base.S, Vh=Vh, rounding=rounding)
    if base.Vh is None:
        core, nu, rho = _left_gram(base, W0, B64, A64, scale)
    else:
        core, nu, rho = _right_gram(base, B64, A64, scale)
    total = min(count + 1, p)  # Ritz vectors: one more than asked for, so that the last one has a lower neighbour
    top = core_top_k(core, min(total + 1, p), device=device)  # and one more half eigenvalue, for the matching check
    lam = (top.S**2).to(torch.float64)  # Ñ's eigenvalues, descending
    Z = top.Y.to(torch.float64)
    half_residual = float((core.matvec(Z) - Z * lam[None, :]).norm(dim=0).max())
    Z = Z[:, :total]
    m, n = int(W0.shape[0]), int(W0.shape[1])
    rank = int(B.shape[1])
    slack = 64 * (m + n + rank) * FLOAT64_UNIT_ROUNDOFF * max(float(lam[0]), 0.0) + 1e-300  # float64 solvers
    w = nu + half_residual + slack
    low = ((lam - w) / (1 + rho) ** 2).clamp_min(0)  # exact λ_i ∈ [low_i, high_i] (Ostrowski and Weyl)
    high = (lam + w) / (1 - rho) ** 2

    # Rayleigh–Ritz of the exact W_t W_tᵀ on the span of the approximate left vectors.
    if base.Vh is None:
        X0 = base.U @ Z
        X0 = _tuned_times(W0, sB, A64, _tuned_transpose_times(W0, sB, A64, X0))  # one power step damps Ũ₀'s error
    else:
        X0 = _tuned_times(W0, sB, A64, (Z.T @ base.Vh).T)  # W_t Ṽ₀z̃_j
    Q, _ = torch.linalg.qr(X0)  # (m, total)
    Y = _tuned_transpose_times(W0, sB, A64, Q)  # (n, total): W_tᵀQ
    theta, E = torch.linalg.eigh(Y.T @ Y)
    theta, E = theta.flip(0), E.flip(1)
    X, YE = Q @ E, Y @ E  # Ritz vectors; W_tᵀX
    R = _tuned_times(W0, sB, A64, YE) - X * theta[None, :]
    residuals, ritz = R.norm(dim=0), spectral_norm(R) + slack
    sines = torch.full((count,), math.inf, dtype=torch.float64)
    # Kahan: each θ_i is within ‖R‖ of a distinct exact eigenvalue; they are the top `total` ones, index for index,
    # when every eigenvalue below them (at most high_total) is under θ_last − ‖R‖.
    below = float(high[total]) if total < p else -math.inf  # bounds every eigenvalue outside the Ritz set
    matched = float(theta[total - 1]) - ritz > below
    if not matched:
        below = float(high[-1]) if len(lam) < p else -math.inf
    for j in range(count):
        t = float(theta[j])
        if matched:
            gaps = [abs(t - float(theta[i])) - ritz for i in range(total) if i != j]
        else:
            gaps = [max(float(low[i]) - t, t - float(high[i])) for i in range(len(lam)) if i != j]
        gap = min([*gaps, t - below])
        if gap > 0:
            sine = (float(residuals[j]) + slack) / gap
            sines[j] = sine if sine < 1 else math.inf
    cosines = rounded_transpose_product(base.U, X[:, :count])  # (p, count): Ũ₀ᵀx_j
    beta = cosine_error_bound(rounding.U, m)
    band = beta + math.sqrt(2) * sines + 8 * FLOAT64_UNIT_ROUNDOFF
    S = theta[:count].clamp_min(0).sqrt()
    return CertifiedSpectrum(S=S, Y=cosines, band=band, frobenius_sq=core.frobenius_sq())
