"""Singular value decompositions: full thin SVD (the base), dense top-k (full fine-tuning), effective rank.

Convention (DESIGN.md): W has shape (out, in) as in ``nn.Linear``; W = U Σ Vᵀ with σ descending; the
*left* singular vectors (columns of U) are compared. All routines work in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from intrudim.spectral.rounding import FactorRounding

# Below this many rows/columns a dense LAPACK SVD beats ARPACK's iteration overhead.
DENSE_SVD_MAX_DIM = 160


@dataclass(frozen=True)
class SVDFactors:
    """Thin SVD ``W = U diag(S) Vh``: U (out, p), S (p,) descending, Vh (p, in), p = min(out, in).

    ``Vh`` is None for a wide or square base SVD computed without its right vectors (:func:`base_svd` with
    ``right_vectors=False``, what the cache stores for such matrices): U then spans the whole output space, and the
    right vectors are Σ⁻¹UᵀW, which the users of such factors form from W itself where they need them.

    ``rounding``: set for factors a half-precision cache stored (U, Vh in float16 or bfloat16): how far each is
    from the float64 factor it was rounded from (:mod:`intrudim.spectral.rounding`); None for float32/float64."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor | None
    rounding: FactorRounding | None = None

    @property
    def rank_dim(self) -> int:
        return int(self.S.shape[0])


def thin_svd(W: torch.Tensor) -> SVDFactors:
    """Full thin SVD of ``W`` in float64 (``torch.linalg.svd(full_matrices=False)``)."""
    U, S, Vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
    return SVDFactors(U=U, S=S, Vh=Vh)


GRAM_MAX_CONDITION = 3e5
"""The Gram route is tried only when σ_max/σ_min ≤ this. Squaring W squares its condition number; the split below
keeps every factor within float32 precision up to κ ≈ 5·10⁵ (see :func:`base_svd`), and the probe check decides."""
GRAM_SPLIT = 1e-2
"""Singular values below GRAM_SPLIT·σ₁ are solved a second time from the rows of UᵀW instead of from W Wᵀ."""
GRAM_CHECK_RTOL = 1e-7
"""Relative float64 residuals the Gram factors must meet on random probes, else LAPACK's SVD is used: float32's
rounding (6e-8), the precision the default cache stores the factors in anyway."""


def base_svd(W: torch.Tensor, *, seed: int = 0, right_vectors: bool = True) -> SVDFactors:
    """Thin SVD of a base matrix for the float32 cache: the factors of :func:`thin_svd` (up to signs, and to
    rotations inside repeated singular values) to float32 precision, several times faster for large matrices.

    Written for W (p, q), p ≤ q (a tall W is transposed first). The symmetric eigensolver runs on the smaller
    Gram matrix G = W Wᵀ in float64: G = E Λ Eᵀ, and the rows of Z = EᵀW are σ_i v_iᵀ, so U = E, σ = √λ,
    Vᵀ = Σ⁻¹Z. The eigensolver is exact to ε·σ₁² (ε: float64 rounding), so for small σ_i the rows of Σ⁻¹Z lose
    orthogonality as ε·σ₁²/(σ_i σ_j). Rows with σ_i < :data:`GRAM_SPLIT`·σ₁ (a handful in a weight matrix) are
    therefore re-solved from Z itself, which holds them to ε·σ₁ (not squared): the eigendecomposition of their
    small Gram matrix Z_b Z_bᵀ = Q Λ_b Qᵀ rotates E_b → E_b Q and Z_b → Qᵀ Z_b. Then the top rows are orthogonal
    to ε·σ₁²/(σ_i σ_j) ≤ ε/GRAM_SPLIT² for σ above the split, top against bottom to ε·κ/GRAM_SPLIT, the bottom
    rows among themselves to ε·(GRAM_SPLIT·κ)², all below 1e-8 for κ ≤ :data:`GRAM_MAX_CONDITION`; and
    U Σ Vᵀ = E Eᵀ W = W holds for any orthogonal E. So a matrix with σ_max/σ_min above that limit, or whose factors
    fail the float64 probes (W x = U Σ Vᵀx, UᵀU x = x, Vh Vhᵀ x = x to :data:`GRAM_CHECK_RTOL`), takes LAPACK's
    SVD, as does a small one.

    ``right_vectors=False``: for a wide or square W (U = E spans the whole output space) the right vectors are
    neither formed nor returned (``Vh`` None): of Z only the rows of the second solve are computed, which saves
    the p×p×q product Z = EᵀW (1.5 s of a 4096² matrix's 10 s on 2 cores) and the Vh half of the cache entry. The
    probes still check them, as Vh = Σ⁻¹UᵀW applied implicitly, so the U returned passes the same test as the full
    call's (equal to it up to rounding: the second solve's rows of Z come from a smaller product). A tall W's right
    vectors are its Gram eigenvectors, free: they are always returned.
    """
    W64 = W.to(torch.float64)
    m, n = W64.shape
    p = min(m, n)
    if p <= DENSE_SVD_MAX_DIM:
        return thin_svd(W64)
    wide = m <= n
    solved = _gram_eigh(W64, wide)
    if solved is None:  # the Gram matrix is provably too ill-conditioned to try (its diagonal shows it)
        return thin_svd(W64)
    evals, E = solved
    if not bool(evals[0] > 0):
        return thin_svd(W64)
    split = int((evals >= (GRAM_SPLIT**2) * evals[0]).sum())
    # Z (p, q): rows σ_i v_iᵀ (wide) or σ_i u_iᵀ (tall), computed in the layout the factor is stored in (Vh row-major;
    # for a tall W, U = Zᵀ (q, p) row-major), so that no transposed copy of it is made later. Without right vectors
    # (wide), only the rows of the second solve.
    left_only = wide and not right_vectors
    Z = None if left_only else (E.T @ W64 if wide else (W64 @ E).T)
    S = evals[:split].clamp_min(0).sqrt()
    if split < p:
        Zb = E[:, split:].T @ W64 if Z is None else Z[split:]
        lam_b, Qb = torch.linalg.eigh(Zb @ Zb.T)
        lam_b, Qb = lam_b.flip(0), Qb.flip(1)
        if not bool(lam_b[-1] > 0):
            return thin_svd(W64)
        E[:, split:] = E[:, split:] @ Qb  # in place: E and Z are this function's own (no copy of the large parts)
        if Z is not None:
            Z[split:] = Qb.T @ Zb
        S = torch.cat([S, lam_b.sqrt()])
        if not bool((S[1:] <= S[:-1]).all()):  # the two blocks can interleave by rounding at the split
            order = torch.argsort(S, descending=True)
            S, E = S[order], E[:, order]
            Z = None if Z is None else Z[order]
    if not float(S[0] / S[-1]) <= GRAM_MAX_CONDITION:
        return thin_svd(W64)
    if Z is None:
        U, Vh = E, None
    else:
        R = Z.div_(S[:, None])
        U, Vh = (E, R) if wide else (R.T, E.T.contiguous())
    if not _factors_check(W64, U, S, Vh, seed):
        return thin_svd(W64)
    return SVDFactors(U=U, S=S, Vh=Vh)


def _gram_eigh(W64: torch.Tensor, wide: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eigenvalues (descending) and eigenvectors of W Wᵀ (``wide``) or Wᵀ W, in float64; None when the Gram matrix
    is provably too ill-conditioned for :func:`base_svd` before the eigensolver runs.

    On the CPU: BLAS ``dsyrk`` forms one triangle of −G (half a GEMM's flops, and no copy: W's rows are read as a
    Fortran-ordered transpose) and LAPACK's divide-and-conquer ``dsyevd`` (scipy) solves it, together ~1.3× faster
    than torch's matmul + eigh; BLAS gets as many threads as torch has for the call. The eigensolver returns −G's
    eigenvalues ascending, which is G's descending, so the eigenvectors come in the order wanted and are used in
    the solver's own (column-major) memory: no reversed copy. Before the eigensolver, a free test on G's diagonal:
    λ_min ≤ min G_ii and λ_max ≥ max G_ii, so min G_ii < max G_ii/κ² proves the condition check after the
    eigensolver would fail (a zero or near-zero row or column of W); the matrix then goes to LAPACK's SVD without
    an eigendecomposition. (A Cholesky test of G − (λ_max/κ²)·I, which decides exactly, cost ~0.6 s per 4096²
    matrix, 5% of the route; of SmolLM2's 210 matrices one is above κ = 3·10⁵, so on real weights it cost far
    more than the eigendecompositions it saved.)
    Elsewhere (a GPU): torch, without the test.
    """
    if W64.device.type != "cpu":
        evals, evecs = torch.linalg.eigh(W64 @ W64.T if wide else W64.T @ W64)
        return evals.flip(0), evecs.flip(1)
    from scipy.linalg import blas, eigh
    from threadpoolctl import threadpool_limits

    A = W64.contiguous().numpy()  # (m, n), C order: A.T is the same memory in Fortran order
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        # syrk(a, trans=0) = a aᵀ, syrk(a, trans=1) = aᵀ a, with a = Aᵀ (n, m) in Fortran order
        negated = blas.dsyrk(-1.0, A.T, trans=1 if wide else 0, lower=True)
        if _surely_too_ill_conditioned(-np.diagonal(negated)):
            return None
        negated_evals, evecs = eigh(negated, lower=True, driver="evd", overwrite_a=True, check_finite=False)
    return torch.from_numpy(-negated_evals), torch.from_numpy(evecs)  # evecs: Fortran order, a column-major tensor


def _surely_too_ill_conditioned(diagonal: np.ndarray) -> bool:
    """Whether G's diagonal alone proves λ_max(G)/λ_min(G) > κ² (κ = :data:`GRAM_MAX_CONDITION`), or G = 0.

    Sufficient, not necessary: λ_min ≤ min G_ii and λ_max ≥ max G_ii (Rayleigh quotients of unit vectors), so
    min G_ii < max G_ii/κ² implies the ratio. It catches W with a (near-)zero row or column (pruned or dead units);
    other ill-conditioned matrices are found by the condition check after the eigensolver."""
    largest = float(diagonal.max())
    return not largest > 0 or float(diagonal.min()) < largest / GRAM_MAX_CONDITION**2


def _factors_check(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor | None, seed: int) -> bool:
    """Float64 probes of W = U diag(S) Vh with orthonormal U and Vh: O((m + n)·p) per probe, no p×p product.

    ``Vh`` None (a wide W's left factors only): the right vectors are Vh = Σ⁻¹UᵀW, applied implicitly (each
    product divides by σ once, so rounding grows only as ε·κ): Vh Vhᵀ y = y holds iff U diagonalises W Wᵀ with
    eigenvalues σ² to the tolerance, pair by pair relative to σ_i σ_j, the same test as on explicit rows."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    m, n = W.shape
    p = S.shape[0]
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64).to(W.device)
    y = torch.randn(p, 2, generator=generator, dtype=torch.float64).to(W.device)
    scale = float(S[0])
    if Vh is None:
        Wx = W @ x
        reconstruction = (Wx - U @ (U.T @ Wx)).norm() / (scale * x.norm())
        z = W.T @ (U @ (y / S[:, None]))  # Vhᵀ y
        right = ((U.T @ (W @ z)) / S[:, None] - y).norm() / y.norm()
    else:
        reconstruction = (W @ x - U @ (S[:, None] * (Vh @ x))).norm() / (scale * x.norm())
        right = (Vh @ (Vh.T @ y) - y).norm() / y.norm()
    left = (U.T @ (U @ y) - y).norm() / y.norm()
    worst = max(float(reconstruction), float(left), float(right))
    return worst == worst and worst <= GRAM_CHECK_RTOL  # NaN fails


def _arpack_top_k(
    matvec, rmatvec, shape: tuple[int, int], k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular triplets of an implicit float64 operator with ARPACK (Lanczos), σ descending."""
    # Imported here: scipy.sparse.linalg costs ~0.2 s of CPU to import, and only Lanczos needs it (`intrudim --help`
    # and every command that runs no Lanczos top-k never import it).
    from scipy.sparse.linalg import LinearOperator, svds

    operator = LinearOperator(shape, matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    # A fixed start vector makes results reproducible run to run.
    v0 = np.random.default_rng(seed).standard_normal(min(shape))
    U, S, Vh = svds(operator, k=k, solver="arpack", tol=0, v0=v0, which="LM")
    order = np.argsort(S)[::-1]
    return U[:, order], S[order], Vh[order, :]


def _arpack_symmetric_top_k(matvec, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs (largest algebraic, descending) of an implicit symmetric float64 operator with ARPACK."""
    from scipy.sparse.linalg import LinearOperator, eigsh  # see _arpack_top_k for why it is imported here

    operator = LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    evals, evecs = eigsh(operator, k=k, which="LA", tol=0, v0=v0)
    order = np.argsort(evals)[::-1]
    return evals[order], evecs[:, order]


def top_k_svd(W: torch.Tensor, k: int) -> SVDFactors:
    """Top-k singular triplets of a dense matrix, without a full SVD when k is small (Lanczos).

    Used for fully fine-tuned matrices, where only the top-k tuned vectors are compared (Sec. 4).
    """
    W64 = W.to(torch.float64)
    m, n = W64.shape
    p = min(m, n)
    if k >= p - 1 or p <= DENSE_SVD_MAX_DIM or 3 * k >= p:
        full = thin_svd(W64)
        return SVDFactors(U=full.U[:, :k], S=full.S[:k], Vh=full.Vh[:k])
    Wn = W64.numpy()
    U, S, Vh = _arpack_top_k(lambda x: Wn @ x, lambda y: Wn.T @ y, (m, n), k)
    return SVDFactors(U=torch.from_numpy(U.copy()), S=torch.from_numpy(S.copy()), Vh=torch.from_numpy(Vh.copy()))


def singular_values(W: torch.Tensor) -> torch.Tensor:
    """All singular values of ``W`` (float64, descending)."""
    return torch.linalg.svdvals(W.to(torch.float64))


def low_rank_singular_values(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Singular values of ``scale · B A`` (B: (out, r), A: (r, in)) from two thin QRs, never forming B A."""
    B64, A64 = B.to(torch.float64), A.to(torch.float64)
    _, RB = torch.linalg.qr(B64)  # (r, r)
    _, RA = torch.linalg.qr(A64.T)  # (r, r)
    return torch.linalg.svdvals(scale * RB @ RA.T)


def low_rank_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """All r singular values (descending) and left singular vectors (out, r), float64, of ``scale · B A`` from
    two thin QRs (never forming B A): the effective rank and the top direction of a LoRA update in one pass."""
    B64, A64 = B.to(torch.float64), A.to(torch.float64)
    QB, RB = torch.linalg.qr(B64)  # (out, r), (r, r)
    _, RA = torch.linalg.qr(A64.T)  # (r, r)
    U, S, _ = torch.linalg.svd(scale * RB @ RA.T)
    return S, QB @ U


def dense_top_direction(D: torch.Tensor) -> tuple[float, torch.Tensor]:
    """σ₁ and the top left singular vector (float64) of a dense matrix (Lanczos unless small)."""
    top = top_k_svd(D, 1)
    return float(top.S[0]), top.U[:, 0]


def effective_rank(sigma: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of σ/‖σ‖₁ (Sec. 4.2, Fig. 6).

    Zero singular values contribute nothing; the zero matrix has effective rank 0.
    """
    sigma = sigma.to(torch.float64).abs()
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))
