"""Top-k SVD of a LoRA-tuned matrix W₀ + s·B·A from its factors, never a dense SVD of the sum.

With the cached thin base SVD W₀ = U₀ Σ₀ V₀ᵀ (U₀: (out, p), V₀: (in, p), p = min(out, in)):

    B = U₀ B₀ + Q_B T_B      (B₀ = U₀ᵀB, Q_B T_B = QR of the part of B outside span(U₀))
    Aᵀ = V₀ A₀ + Q_A T_A     (likewise for the rows of A against span(V₀))

so W₀ + sBA = [U₀ Q_B] · M · [V₀ Q_A]ᵀ with the small "core"

    M = diag(Σ₀, 0) + s · [B₀; T_B] [A₀; T_A]ᵀ        ((p + r_B) × (p + r_A), diagonal + rank r).

The bases are orthonormal, so M has the singular values of W_t, and a left singular vector y of M is
u = [U₀ Q_B] y in the output space. Its cosine with base vector i is simply y_i (i < p), because
Q_B ⟂ U₀: the max |cos| to every base vector is max |y[:p]| — no m×p product needed.

When out > in, the thin U₀ does not span ℝ^out; Q_B carries the rest (DESIGN.md). The top-k of M come
from ARPACK Lanczos on the implicit diagonal-plus-rank-r operator: O((p + r)·r) per product.

A wide or square W₀ (out ≤ in) whose cached SVD has no right vectors (the cache's Gram route leaves them out, see
:func:`~intrudim.spectral.svd.base_svd`) takes :class:`GramCore` instead: U₀ spans ℝ^out, and the left vectors of
W_t are the eigenvectors of the p × p matrix N = U₀ᵀ W_t W_tᵀ U₀, diagonal plus rank 2r, built from W₀ and the
factors without V₀.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from intrudim.spectral.krylov import block_krylov_top_k
from intrudim.spectral.shift_invert import diagonal_lowrank_top_k, lora_core_top_k, middle
from intrudim.spectral.svd import DENSE_SVD_MAX_DIM, SVDFactors, _arpack_symmetric_top_k, _arpack_top_k

# A residual column counts as outside the base span only above this relative size.
_RESIDUAL_RTOL = 1e-10


@dataclass(frozen=True)
class LoraCore:
    """W₀ + s·B·A expressed in base coordinates (see module docstring)."""

    S0: torch.Tensor  # (p,)
    B_coords: torch.Tensor  # (p + r_B, r): [B₀; T_B] scaled by s
    A_coords: torch.Tensor  # (p + r_A, r): [A₀; T_A]
    p: int
    Q_out: torch.Tensor | None = None  # (out, r_B) float64: B's part outside span(U₀), orthonormal; None if r_B = 0
    Q_in: torch.Tensor | None = None  # (in, r_A) float64: A's rows outside span(V₀); None if r_A = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B_coords.shape[0]), int(self.A_coords.shape[0]))

    def dense(self) -> torch.Tensor:
        """The core M as a dense matrix (for small cores and tests)."""
        rows, cols = self.shape
        M = self.B_coords @ self.A_coords.T
        idx = torch.arange(self.p)
        M[idx, idx] += self.S0
        return M

    def frobenius_sq(self) -> float:
        """‖W₀ + sBA‖_F² = ‖M‖_F², in O((p + r)·r²) without forming M."""
        p = self.p
        cross = (self.B_coords[:p] * self.A_coords[:p]).sum(dim=1)  # diag of B̃Ãᵀ on the first p
        lowrank_sq = ((self.B_coords.T @ self.B_coords) * (self.A_coords.T @ self.A_coords)).sum()
        return float((self.S0**2).sum() + 2.0 * (self.S0 * cross).sum() + lowrank_sq)


def _split_against_basis(
    X: torch.Tensor, basis: torch.Tensor, full_span: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Coordinates (float64) of the columns of X (dim, r) in [basis, Q], Q an orthonormal basis of the residual.

    Returns the coordinates and Q (float64, or None when X lies inside span(basis)).

    Products run in the basis's dtype (float32 when the cache stores float32 factors: no large float64
    copy of the basis is made) and are written as (Xᵀ·basis)ᵀ, which is several times faster in torch than
    basisᵀ·X with a transposed view.
    """
    X = X.to(basis.dtype)
    inside = (X.T @ basis).T  # (p, r)
    if full_span:
        return inside.to(torch.float64), None
    residual = X - basis @ inside  # (dim, r)
    # One re-orthogonalisation pass keeps Q ⟂ basis to working precision (classical Gram-Schmidt twice).
    correction = (residual.T @ basis).T
    inside = inside + correction
    residual = (residual - basis @ correction).to(torch.float64)
    Q, T = torch.linalg.qr(residual)  # Q: (dim, r), T: (r, r)
    scale = max(float(X.norm()), 1e-300)
    rtol = _RESIDUAL_RTOL if basis.dtype == torch.float64 else 1e-5
    if float(T.abs().max()) <= rtol * scale:
        return inside.to(torch.float64), None
    return torch.cat([inside.to(torch.float64), T], dim=0), Q


@dataclass(frozen=True)
class GramCore:
    """W_t = W₀ + s·B·A for a wide or square W₀ (p = out) whose base SVD has no right vectors.

    U₀ is square orthogonal, so the left singular vectors of W_t in base coordinates (y = U₀ᵀu) and its singular
    values are the eigenpairs (y, σ²) of

        N = U₀ᵀ W_t W_tᵀ U₀ = Σ₀² + C B̃ᵀ + B̃ Cᵀ + B̃ (A Aᵀ) B̃ᵀ        (p × p, diagonal plus rank 2r)

    with B̃ = s·U₀ᵀB and C = U₀ᵀ(W₀Aᵀ): the W₀ V₀ Σ₀ A₀ cross term of the LoRA core's M Mᵀ written without V₀, and
    A₀ᵀA₀ + T_AᵀT_A = A Aᵀ. Nothing is divided by σ, so the small base singular values cost no precision (the
    form A₀ = Σ₀⁻¹C does: errors of ~1e-4 measured). ARPACK's ``svds`` of the LoRA core already iterates on
    M Mᵀ, so the top-k eigenpairs of N are as accurate as the core's: σ_j to ε·σ₁²/σ_j relative.
    """

    S0: torch.Tensor  # (p,)
    B_coords: torch.Tensor  # (p, r): s·U₀ᵀB
    C: torch.Tensor  # (p, r): U₀ᵀ(W₀Aᵀ)
    AAt: torch.Tensor  # (r, r)
    p: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.p, self.p)

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        """N·X for a block X (p, m): O(p·r·m)."""
        Bt = self.B_coords.T @ X  # (r, m)
        return self.S0[:, None] ** 2 * X + self.C @ Bt + self.B_coords @ (self.C.T @ X + self.AAt @ Bt)

    def dense(self) -> torch.Tensor:
        """N as a dense matrix (for small cores and tests)."""
        N = self.C @ self.B_coords.T
        N = N + N.T + self.B_coords @ self.AAt @ self.B_coords.T
        idx = torch.arange(self.p)
        N[idx, idx] += self.S0**2
        return N

    def frobenius_sq(self) -> float:
        """‖W₀ + sBA‖_F² = trace(N), in O(p·r²)."""
        return float(
            (self.S0**2).sum() + 2.0 * (self.B_coords * self.C).sum()
            + ((self.B_coords.T @ self.B_coords) * self.AAt).sum()
        )  # fmt: skip


def _check_factor_shapes(out_dim: int, in_dim: int, B: torch.Tensor, A: torch.Tensor) -> None:
    if B.shape[0] != out_dim or A.shape[1] != in_dim or B.shape[1] != A.shape[0]:
        raise ValueError(
            f"LoRA factors B {tuple(B.shape)} and A {tuple(A.shape)} do not fit a base matrix of shape "
            f"({out_dim}, {in_dim}): expected B (out, r) and A (r, in)."
        )


def lora_core(
    base: SVDFactors, B: torch.Tensor, A: torch.Tensor, scale: float, W0: torch.Tensor | None = None
) -> LoraCore | GramCore:
    """Express W₀ + scale·B·A in the base's singular coordinates. B: (out, r), A: (r, in).

    A base SVD without right vectors (``base.Vh`` None: a wide or square matrix from the cache's Gram route)
    gives a :class:`GramCore`, which needs W₀ (out, in) itself."""
    if base.Vh is None:
        if W0 is None:
            raise ValueError("This base SVD has no right vectors (Vh); pass W0 to express the tuned matrix.")
        return gram_core(base, W0, B, A, scale)
    U0 = base.U  # float64, or float32 as stored in the cache
    V0 = base.Vh.T
    S0 = base.S.to(torch.float64)
    out_dim, in_dim = U0.shape[0], V0.shape[0]
    p = int(S0.shape[0])
    _check_factor_shapes(out_dim, in_dim, B, A)
    B_coords, Q_out = _split_against_basis(B, U0, full_span=(p == out_dim))
    A_coords, Q_in = _split_against_basis(A.T, V0, full_span=(p == in_dim))
    return LoraCore(S0=S0, B_coords=B_coords * scale, A_coords=A_coords, p=p, Q_out=Q_out, Q_in=Q_in)


def check_gram_base(base: SVDFactors, W0: torch.Tensor) -> tuple[int, int, int]:
    """(out, in, p) of a base matrix whose SVD has no right vectors, checked to be wide or square with U₀ spanning
    its rows (what a :class:`GramCore` needs)."""
    out_dim, in_dim = int(W0.shape[0]), int(W0.shape[1])
    p = int(base.S.shape[0])
    if base.U.shape[0] != out_dim or p != out_dim:
        raise ValueError(
            f"A base SVD without right vectors needs a wide or square base matrix whose U spans its rows; got U "
            f"{tuple(base.U.shape)} for a base matrix of shape ({out_dim}, {in_dim})."
        )
    return out_dim, in_dim, p


def gram_core(base: SVDFactors, W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float) -> GramCore:
    """The :class:`GramCore` of W₀ + scale·B·A from U₀, Σ₀ and W₀ (out ≤ in). Products run in U₀'s dtype (float32
    for the default cache: the same precision as the LoRA core's projections on the stored V₀)."""
    U0 = base.U
    out_dim, in_dim, p = check_gram_base(base, W0)
    _check_factor_shapes(out_dim, in_dim, B, A)
    dtype = U0.dtype
    A_ = A.to(dtype)
    WA = W0.to(dtype) @ A_.T  # (out, r)
    B_coords = (B.to(dtype).T @ U0).T.to(torch.float64) * scale  # written as (Bᵀ U₀)ᵀ: see _split_against_basis
    C = (WA.T @ U0).T.to(torch.float64)
    A64 = A.to(torch.float64)
    return GramCore(S0=base.S.to(torch.float64), B_coords=B_coords, C=C, AAt=A64 @ A64.T, p=p)


@dataclass(frozen=True)
class CoreTopK:
    """Top singular triplets of the core: S (k,), Y (rows, k) left vectors in [U₀ Q_B] coordinates."""

    S: torch.Tensor
    Y: torch.Tensor

    def max_abs_cosine(self, p: int) -> torch.Tensor:
        """max_i |cos(u_j, u_i^base)| for each returned vector: the largest |coordinate| among the first p."""
        return self.Y[:p].abs().amax(dim=0)


TOP_K_METHODS = ("auto", "lanczos", "krylov", "dense")


def core_top_k(core: LoraCore | GramCore, k: int, *, method: str = "auto", device: str = "cpu") -> CoreTopK:
    """Top-k SVD of the core M; the result is on the CPU in float64.

    ``method``: "lanczos" (ARPACK on the implicit operator, CPU), "krylov" (block Krylov in torch on ``device``,
    :mod:`intrudim.spectral.krylov`), "dense" (an SVD of the dense core on ``device``), or "auto": dense (on
    ``device``) for small cores or large k, otherwise ARPACK on the CPU whatever ``device`` is. The core is
    diagonal plus rank r, O((p + r)·r) numbers: each product is microseconds of work, so on a GPU every iteration
    is kernel-launch and synchronisation latency. Measured on an H100 (benchmarks/bench_krylov.py, RESULTS.md §7),
    block Krylov there took 0.03 s (spiked base) and 0.14 s (clustered Gaussian) per 4096² core against ARPACK's
    0.02 s and 0.08 s on that machine's CPU; the core is built on the CPU, so ARPACK also moves nothing.
    """
    if method not in TOP_K_METHODS:
        raise ValueError(f"Unknown top-k method {method!r}; use one of {', '.join(TOP_K_METHODS)}.")
    rows, cols = core.shape
    small = min(rows, cols)
    if k > small:
        raise ValueError(f"k={k} exceeds the number of singular values ({small}).")
    use_dense = method == "dense" or (
        method == "auto" and (small <= DENSE_SVD_MAX_DIM or k >= small - 1 or 3 * k >= small)
    )
    if method == "lanczos" and k >= small - 1:
        use_dense = True  # ARPACK needs k < min(shape) - 1
    if isinstance(core, GramCore):
        return _gram_top_k(core, k, "dense" if use_dense else method, device)
    if use_dense:
        return _dense_core_top_k(core, k, device)
    if method == "krylov":
        return _krylov_core_top_k(core, k, device)
    return _arpack_core_top_k(core, k)


def _gram_top_k(core: GramCore, k: int, method: str, device: str) -> CoreTopK:
    """Top-k eigenpairs of N (σ = √λ): a dense ``eigh`` on ``device``, block Krylov in torch on ``device`` (on the
    symmetric operator, a dense ``eigh`` if it stalls), or ARPACK's symmetric Lanczos (``eigsh``) on the CPU."""
    if method == "dense":
        evals, evecs = torch.linalg.eigh(core.dense().to(device))
        return _from_eigenpairs(evals.flip(0)[:k].cpu(), evecs.flip(1)[:, :k].cpu())
    if method == "krylov":
        moved = GramCore(
            S0=core.S0.to(device), B_coords=core.B_coords.to(device), C=core.C.to(device),
            AAt=core.AAt.to(device), p=core.p,
        )  # fmt: skip
        n_coords = min(k + 8, core.p)
        coords = torch.zeros(core.p, n_coords, dtype=torch.float64, device=device)
        coords[torch.arange(n_coords), torch.arange(n_coords)] = 1.0
        start = torch.cat([coords, moved.B_coords, moved.C], dim=1)
        result = block_krylov_top_k(moved.matvec, moved.matvec, core.shape, k, start)
        if not result.converged:
            return _gram_top_k(core, k, "dense", device)
        return _from_eigenpairs(result.S.cpu(), result.Y.cpu())  # N is positive semi-definite: σ(N) = λ(N)

    # N·x = Σ₀²x + G·(M·Gᵀx) with G = [C, B̃] (p × 2r) and M = [[0, I], [I, AAᵀ]]: two products with G per step,
    # in numpy (ARPACK calls this ~170 times per matrix; torch's per-call overhead was half of each call's time)
    G = torch.cat([core.C, core.B_coords], dim=1).numpy()
    M, M_inv = middle(core.AAt.numpy())
    s2 = (core.S0**2).numpy()
    shifted = diagonal_lowrank_top_k(s2, G, M, M_inv, k)  # shift-and-invert Lanczos, checked; else plain Lanczos
    if shifted is not None:
        return _from_eigenpairs(torch.from_numpy(shifted[0].copy()), torch.from_numpy(shifted[1].copy()))

    def matvec(x: np.ndarray) -> np.ndarray:
        X = x.reshape(core.p, -1)
        return (s2[:, None] * X + G @ (M @ (G.T @ X))).reshape(x.shape)

    evals, evecs = _arpack_symmetric_top_k(matvec, core.p, k)
    return _from_eigenpairs(torch.from_numpy(evals.copy()), torch.from_numpy(evecs.copy()))


def _from_eigenpairs(evals: torch.Tensor, evecs: torch.Tensor) -> CoreTopK:
    """CoreTopK from N's eigenpairs, descending: σ = √λ (a rounding-negative λ of a rank-deficient W_t is 0)."""
    return CoreTopK(S=evals.clamp_min(0).sqrt(), Y=evecs)


def _shifted_core_top_k(core: LoraCore, k: int) -> CoreTopK | None:
    """The core's top-k by shift-and-invert Lanczos on M·Mᵀ (:func:`~intrudim.spectral.shift_invert.lora_core_top_k`),
    or None when that route declines or cannot certify its result."""
    found = lora_core_top_k(core.S0.numpy(), core.B_coords.numpy(), core.A_coords.numpy(), core.p, k)
    return None if found is None else CoreTopK(S=torch.from_numpy(found[0]), Y=torch.from_numpy(found[1]))


def _arpack_core_top_k(core: LoraCore, k: int) -> CoreTopK:
    """ARPACK Lanczos on the implicit diagonal-plus-rank-r operator (numpy, CPU): O((p + r)·r) per product; first
    by shift-and-invert on M·Mᵀ (:func:`_shifted_core_top_k`), plain ``svds`` when that cannot certify its result."""
    shifted = _shifted_core_top_k(core, k)
    if shifted is not None:
        return shifted
    p = core.p
    S0 = core.S0.numpy()
    Bc = core.B_coords.numpy()
    Ac = core.A_coords.numpy()

    def matvec(x: np.ndarray) -> np.ndarray:
        x = x.reshape(-1)
        y = Bc @ (Ac.T @ x)
        y[:p] += S0 * x[:p]
        return y

    def rmatvec(y: np.ndarray) -> np.ndarray:
        y = y.reshape(-1)
        x = Ac @ (Bc.T @ y)
        x[:p] += S0 * y[:p]
        return x

    U, S, _ = _arpack_top_k(matvec, rmatvec, core.shape, k)
    return CoreTopK(S=torch.from_numpy(S.copy()), Y=torch.from_numpy(U.copy()))


def _krylov_core_top_k(core: LoraCore, k: int, device: str) -> CoreTopK:
    """Block Krylov on the implicit operator in torch float64 on ``device``; a dense SVD there if it stalls.

    The start block holds what the top of W₀ + sBA is made of: the k + 8 leading base coordinates, the columns of
    B (in base coordinates) and Σ₀·A's, so a few iterations reach float64 rounding.
    """
    p = core.p
    rows, cols = core.shape
    S0 = core.S0.to(device=device, dtype=torch.float64)
    Bc = core.B_coords.to(device=device, dtype=torch.float64)
    Ac = core.A_coords.to(device=device, dtype=torch.float64)

    def matvec(X: torch.Tensor) -> torch.Tensor:
        Y = Bc @ (Ac.T @ X)
        Y[:p] += S0[:, None] * X[:p]
        return Y

    def rmatvec(Y: torch.Tensor) -> torch.Tensor:
        X = Ac @ (Bc.T @ Y)
        X[:p] += S0[:, None] * Y[:p]
        return X

    n_coords = min(k + 8, p)
    coords = torch.zeros(rows, n_coords, dtype=torch.float64, device=device)
    coords[torch.arange(n_coords), torch.arange(n_coords)] = 1.0
    sigma_A = torch.zeros(rows, Ac.shape[1], dtype=torch.float64, device=device)
    shared = min(p, rows)
    sigma_A[:shared] = S0[:shared, None] * Ac[:shared]
    start = torch.cat([coords, Bc, sigma_A], dim=1)
    result = block_krylov_top_k(matvec, rmatvec, (rows, cols), k, start)
    if not result.converged:
        return _dense_core_top_k(core, k, device)
    return CoreTopK(S=result.S.cpu(), Y=result.Y.cpu())


def _dense_core_top_k(core: LoraCore, k: int, device: str = "cpu") -> CoreTopK:
    """Top-k of an SVD of the dense core on ``device`` (small cores, large k, a stalled Krylov run), on the CPU."""
    U, S, _ = torch.linalg.svd(core.dense().to(device), full_matrices=False)
    return CoreTopK(S=S[:k].cpu(), Y=U[:, :k].cpu())


def core_right_vectors(core: LoraCore, top: CoreTopK) -> torch.Tensor:
    """Right singular vectors X (cols, k) of the core for the left vectors of ``top``: x_j = Mᵀ y_j / σ_j."""
    p = core.p
    Y = top.Y  # (rows, k)
    X = core.A_coords @ (core.B_coords.T @ Y)  # (cols, k): the rank-r part of Mᵀ Y
    X[:p] += core.S0[:, None] * Y[:p]
    return X / top.S.clamp_min(torch.finfo(torch.float64).tiny)[None, :]


def core_full_spectrum(core: LoraCore) -> CoreTopK:
    """All singular triplets of the core (for the k-sweep of Fig. 11): a dense SVD of the small core."""
    return _dense_core_top_k(core, min(core.shape))


def projected_full_spectrum(
    U0: torch.Tensor, W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float
) -> CoreTopK:
    """All singular values and left vectors, in base coordinates, of W₀ + scale·B·A for a wide or square W₀
    (U₀ square orthogonal): a dense float64 SVD of U₀ᵀW_t (p × in), the k-sweep of a :class:`GramCore`.

    N's small eigenvalues hold σ_j only to ε·σ₁²/σ_j², so the whole spectrum is taken from U₀ᵀW_t itself: as
    accurate as the dense SVD of the LoRA core (p × (p + r)), at the same O(p²·in) cost."""
    Wt = W0.to(torch.float64) + scale * (B.to(torch.float64) @ A.to(torch.float64))
    Y, S, _ = torch.linalg.svd(U0.to(torch.float64).T @ Wt, full_matrices=False)
    return CoreTopK(S=S, Y=Y)
