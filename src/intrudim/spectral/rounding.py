"""Half-precision base factors (float16, bfloat16): the error they put into max |cos|, bounded (issue 28).

A cache written with ``cache_dtype="float16"`` or ``"bfloat16"`` stores Ũ₀ = fl(U₀), the float64 left factor of
LAPACK's SVD of W₀ (the very factor ``--no-cache`` computes) rounded to nearest in the half format, and Ṽ₀ = fl(V₀)
likewise for a tall matrix; σ stays float64. Write D = Ũ₀ − U₀ (m × p, m = out, p = min(out, in)).

1. **One stored entry.** Rounding to nearest with unit roundoff u (2⁻¹¹ for float16, 2⁻⁸ for bfloat16) gives
   |D_li| ≤ u·|U_li| in the normal range, and |D_li| ≤ η below it (half the subnormal spacing, u times the smallest
   normal number: 2⁻²⁵ for float16, 2⁻¹³⁴ for bfloat16). Nothing overflows: |U_li| ≤ 1.
2. **One column.** U₀'s columns are unit vectors, so ‖D e_i‖₂ ≤ u·‖U₀ e_i‖₂ + η√m = u + η√m =: κ (a priori). The
   cache measures the columns when it writes the entry and stores κ = max_i ‖D e_i‖₂ (about u/√3 in practice).
3. **U₀ᵀx for a unit x.** (Ũ₀ᵀx − U₀ᵀx)_i = (D e_i)ᵀx, so by Cauchy–Schwarz each entry is off by at most κ‖x‖ = κ.
   As a vector, ‖Ũ₀ᵀx − U₀ᵀx‖₂ = ‖Dᵀx‖₂ ≤ ‖D‖₂ ≤ ‖D‖_F ≤ √p·κ a priori; the cache certifies ρ ≥ ‖D‖₂ when it
   writes the entry (:func:`certify_rounding`: a Cholesky factorisation of t·I − DᵀD that succeeds, its own
   rounding accounted for), about 1–2·u for a random-like U₀ instead of √p·u. Max |cos| needs only the entries;
   the structured LoRA path (:mod:`intrudim.spectral.rounded_core`) needs ρ.
4. **Accumulation after upcasting.** Every float16 and bfloat16 value is exact in float32 and float64, so the
   upcast itself is exact. Accumulating m products in precision u_a (after rounding x to it) adds, by the standard
   bound |fl(aᵀx̂) − aᵀx̂| ≤ γ_m Σ_l |a_l||x̂_l| with γ_m = m·u_a/(1 − m·u_a), and Σ_l |Ũ_li||x̂_l| ≤
   ‖Ũ₀e_i‖‖x̂‖ ≤ (1 + κ)(1 + u_a), at most (1 + κ)(u_a + γ_m(1 + u_a)) per entry (u_a from rounding x). So every
   computed cosine, and hence max_i |cos| (|max|a| − max|b|| ≤ max|a − b|), is within

        β = κ + (1 + κ)·(u_a + γ_m·(1 + u_a)) + γ_m⁽⁶⁴⁾

   of what ``--no-cache`` computes (its own float64 product with U₀ is within γ_m⁽⁶⁴⁾ of exact). Accumulated in
   float32 (u_a = 2⁻²⁴) the middle term is ≈ m·2⁻²⁴ = 2.4·10⁻⁴ at m = 4096, half of float16's u, and its 2-norm
   over p entries grows as √p: intrudim upcasts the half factors to float64 for every product (u_a = 2⁻⁵³, the
   term ~10⁻¹²; the structured path holds one float64 copy of the matrix analysed, the dense path upcasts U₀ as the
   float32 cache's does).

β bounds the change of max |cos| when the tuned vector x does not depend on the stored factors (a dense fine-tuned
matrix, or ``method="dense"``). For a LoRA matrix the structured top-k computes the tuned vectors from the stored
factors too; :mod:`intrudim.spectral.rounded_core` carries ρ through the perturbation of the small Gram matrix
(Weyl, Davis–Kahan) into a band per vector. ``tests/test_cache_dtype.py`` checks both against the observed errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

HALF_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT64_UNIT_ROUNDOFF = 2.0**-53
ROW_BLOCK = 2048
"""Rows of a half factor upcast to float64 at once (2048 × 4096 × 8 bytes = 64 MiB)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-(mantissa bits): half the distance from 1 to the next number (2⁻¹¹ float16, 2⁻⁸ bfloat16)."""
    return float(torch.finfo(dtype).eps) / 2.0


def subnormal_error(dtype: torch.dtype) -> float:
    """η: the largest rounding error below the normal range, u times the smallest normal number."""
    return unit_roundoff(dtype) * float(torch.finfo(dtype).tiny)


def gamma(n: int, u: float) -> float:
    """γ_n = n·u / (1 − n·u) (Higham, *Accuracy and Stability*, §3.1); infinite when n·u ≥ 1."""
    return n * u / (1.0 - n * u) if n * u < 1.0 else math.inf


@dataclass(frozen=True)
class RoundingBound:
    """F̃ = F + D for one stored factor F with unit columns: ``column`` κ ≥ max_i ‖D e_i‖₂, ``spectral`` ρ ≥ ‖D‖₂."""

    column: float
    spectral: float


@dataclass(frozen=True)
class FactorRounding:
    """What rounding did to a cache entry's factors: its ``dtype`` name, U's bound, and Vᵀ's (Vh's rows as
    columns) when the entry stores right vectors."""

    dtype: str
    U: RoundingBound
    V: RoundingBound | None = None

    @property
    def unit_roundoff(self) -> float:
        return unit_roundoff(HALF_DTYPES[self.dtype])

    def to_metadata(self) -> str:
        entry = {"dtype": self.dtype, "U": [self.U.column, self.U.spectral]}
        if self.V is not None:
            entry["V"] = [self.V.column, self.V.spectral]
        return json.dumps(entry)

    @classmethod
    def from_metadata(cls, text: str | None, dtype: str, U_shape: tuple[int, int],
                      V_shape: tuple[int, int] | None) -> FactorRounding:  # fmt: skip
        """The stored certificates; the a-priori bounds (items 2–3 of the module docstring) for any that is missing
        or unreadable, so a damaged record costs precision, never soundness."""
        try:
            entry = json.loads(text or "")
            U = RoundingBound(*(float(x) for x in entry["U"]))
            V = RoundingBound(*(float(x) for x in entry["V"])) if V_shape is not None else None
            if entry["dtype"] != dtype or not all(math.isfinite(x) for b in (U, V) if b for x in (b.column, b.spectral)):
                raise ValueError
            return cls(dtype, U, V)
        except (ValueError, KeyError, TypeError):
            half = HALF_DTYPES[dtype]
            V = None if V_shape is None else a_priori_bound(half, *V_shape)
            return cls(dtype, a_priori_bound(half, *U_shape), V)


def a_priori_bound(dtype: torch.dtype, rows: int, cols: int) -> RoundingBound:
    """κ = u + η√rows and ρ = √cols·κ (‖D‖₂ ≤ ‖D‖_F), from the format alone."""
    kappa = unit_roundoff(dtype) + subnormal_error(dtype) * math.sqrt(rows)
    return RoundingBound(kappa, math.sqrt(cols) * kappa)


def certify_rounding(F: torch.Tensor, F_rounded: torch.Tensor) -> RoundingBound:
    """κ and a certified ρ ≥ ‖F_rounded − F‖₂ for a float64 factor F (rows, cols) and its rounded copy.

    D = F_rounded − F is exact in float64 (Sterbenz: the two are within a factor 2) except below the half format's
    normal range, where its own rounding, 2⁻⁵³ relative, is absorbed by the 10⁻¹² margins.
    G = DᵀD is formed in float64 (off by at most γ_rows‖D‖_F² in norm); t is a power-iteration estimate of
    λ_max(G) times 1.2; if the Cholesky factorisation of t·I − G succeeds, then t·I − G + E ⪰ 0 with
    ‖E‖₂ ≤ γ_{cols+1}·trace(t·I − G)/(1 − γ_{cols+1}) (Higham, Thm. 10.3), so λ_max(G) ≤ t + that + the rounding of
    the diagonal t − G_ii. If it fails, t grows; the Gershgorin bound max_i Σ_j |G_ij| ends the search. Costs one
    rows × cols² product, once, when the cache writes the entry.
    """
    D = F_rounded.to(torch.float64) - F.to(torch.float64)
    rows, cols = D.shape
    column_sq = (D * D).sum(dim=0)
    kappa = math.sqrt(float(column_sq.max())) * (1 + 1e-12) if cols else 0.0
    frobenius_sq = float(column_sq.sum())
    G = D.T @ D
    x = torch.ones(cols, dtype=torch.float64) + 0.1 * torch.linspace(-1, 1, cols, dtype=torch.float64)
    estimate = 0.0
    for _ in range(40):
        y = G @ x
        norm = float(y.norm())
        if norm == 0.0:
            break
        estimate = float(x @ y) / float(x @ x)
        x = y / norm
    gershgorin = float(G.abs().sum(dim=1).max())
    t = min(max(1.2 * estimate, 1e-300), gershgorin)
    identity = torch.eye(cols, dtype=torch.float64)
    for _ in range(30):
        if t >= gershgorin:
            t = gershgorin
            break
        if int(torch.linalg.cholesky_ex(t * identity - G).info) == 0:
            break
        t *= 1.25
    g = gamma(cols + 1, FLOAT64_UNIT_ROUNDOFF)
    if t < gershgorin:  # the factorisation's backward error
        cholesky = g * cols * t * (1 + FLOAT64_UNIT_ROUNDOFF) / (1 - g)
    else:  # the row sums' rounding
        cholesky = gamma(cols, FLOAT64_UNIT_ROUNDOFF) * t
    slack = cholesky + FLOAT64_UNIT_ROUNDOFF * t + gamma(rows, FLOAT64_UNIT_ROUNDOFF) * frobenius_sq
    rho = math.sqrt(t + slack) * (1 + 1e-12)
    return RoundingBound(kappa, max(rho, kappa))


def certify_factors(dtype: str, U: torch.Tensor, U_rounded: torch.Tensor,
                    Vh: torch.Tensor | None = None, Vh_rounded: torch.Tensor | None = None) -> FactorRounding:  # fmt: skip
    """The :class:`FactorRounding` of a cache entry (V's columns are Vh's rows)."""
    V = None if Vh is None or Vh_rounded is None else certify_rounding(Vh.T, Vh_rounded.T)
    return FactorRounding(dtype, certify_rounding(U, U_rounded), V)


def cosine_error_bound(bound: RoundingBound, rows: int, accumulate: torch.dtype = torch.float64) -> float:
    """β of the module docstring: how far max_i |(F̃ᵀx)_i|, computed by upcasting F̃ (rows × p) to ``accumulate``,
    can be from --no-cache's max_i |(Fᵀx)_i| for a unit x."""
    kappa = bound.column
    u_a = float(torch.finfo(accumulate).eps) / 2.0
    g = gamma(rows, u_a)
    return kappa + (1 + kappa) * (u_a + g * (1 + u_a)) + gamma(rows, FLOAT64_UNIT_ROUNDOFF)


def rounded_transpose_product(F: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """F̃ᵀZ in float64 for a half (or any) factor F̃ (rows, p) and Z (rows, c), upcasting :data:`ROW_BLOCK` rows of
    F̃ at a time (written as (Zᵀ F̃)ᵀ, the faster form in torch; see ``structured._split_against_basis``)."""
    Z = Z.to(torch.float64)
    rows = int(F.shape[0])
    out = torch.zeros(int(F.shape[1]), int(Z.shape[1]), dtype=torch.float64)
    for start in range(0, rows, ROW_BLOCK):
        block = F[start : start + ROW_BLOCK].to(torch.float64)
        out += (Z[start : start + ROW_BLOCK].T @ block).T
    return out


def accumulation_error(bound: RoundingBound, F_shape: tuple[int, int], Z: torch.Tensor) -> float:
    """The float64 accumulation's share of :func:`product_error`: each entry of F̃ᵀZ within γ_rows(1 + κ)‖z_c‖, so
    the (p, c) matrix within γ_rows(1 + κ)√p‖Z‖_F in norm."""
    rows, p = F_shape
    return gamma(rows, FLOAT64_UNIT_ROUNDOFF) * (1 + bound.column) * math.sqrt(p) * float(Z.to(torch.float64).norm())


def product_error(bound: RoundingBound, F_shape: tuple[int, int], Z: torch.Tensor) -> float:
    """An upper bound on ‖rounded_transpose_product(F̃, Z) − FᵀZ‖₂ for F̃ of shape (rows, p): ρ‖Z‖₂ from D, plus the
    float64 accumulation (:func:`accumulation_error`)."""
    return bound.spectral * spectral_norm(Z) + accumulation_error(bound, F_shape, Z)


def spectral_norm(X: torch.Tensor) -> float:
    """‖X‖₂ (float64, from its singular values), rounded up a little."""
    if X.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(X.to(torch.float64), 2)) * (1 + 1e-12) + 1e-300
