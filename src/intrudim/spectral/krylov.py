"""Top-k singular triplets of an implicit operator by block Krylov iteration in torch (any device).

ARPACK (:func:`intrudim.spectral.svd._arpack_top_k`) runs on the CPU through numpy. This solver needs only two
batched products, ``M·X`` and ``Mᵀ·Y`` on blocks of columns, written in torch, so the same code runs on a GPU
(``--device cuda``) and on the CPU (where the tests check it against a dense float64 SVD and against ARPACK).

The method is a block Lanczos/Davidson iteration on MMᵀ with full re-orthogonalisation and thick restarts:

1. ``Q`` (rows × m) is an orthonormal basis; ``C = MᵀQ`` is kept beside it (one product per new column).
2. Rayleigh-Ritz: the eigendecomposition of the small ``G = CᵀC = QᵀMMᵀQ = W Σ² Wᵀ`` gives Ritz values Σ, left
   Ritz vectors ``Y = Q W`` and right ones ``X = C W Σ⁻¹`` (so ``MᵀY = X Σ``); the residual of a triplet is
   ``r_j = M x_j − σ_j y_j``, computed with M itself.
3. The triplet j is converged when ‖r_j‖ ≤ tol · σ₁ (ARPACK with tol=0 stops at machine precision in the same
   sense). Otherwise the residuals of the leading unconverged triplets join the basis: r_j is, up to scale,
   MMᵀy_j − σ_j²y_j, so this is exactly the Krylov expansion of the Ritz vectors.
4. When the basis is full it restarts from its best Ritz vectors (``Q ← Y[:, :keep]``, ``C ← X Σ``, ``G ← Σ²``):
   no product is recomputed.

A start block that already holds the answer's main directions (for a LoRA core: the top base coordinates and the
columns of B) makes it converge in a few iterations. If it has not converged after ``max_products`` columns it
returns ``converged=False`` and the caller falls back to a dense SVD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Product = Callable[[torch.Tensor], torch.Tensor]

# Stop when every wanted residual is below TOL·σ₁: a few units of float64 rounding in a product of this size.
DEFAULT_TOL = 1e-13


@dataclass(frozen=True)
class KrylovResult:
    """S (k,) descending, Y (rows, k) left and X (cols, k) right singular vectors, and how the run went."""

    S: torch.Tensor
    Y: torch.Tensor
    X: torch.Tensor
    converged: bool
    products: int  # columns multiplied by M and by Mᵀ (each)
    max_residual: float  # max_j ‖M x_j − σ_j y_j‖ / σ₁ over the returned triplets


def _orthonormal_extension(Q: torch.Tensor | None, V: torch.Tensor, drop_rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns spanning the part of span(V) outside span(Q) (two Gram-Schmidt passes, then QR).

    Each column of V is normalised first, so residuals of very different sizes count alike; a column whose
    remainder is below ``drop_rtol`` of its length adds nothing new and is dropped.
    """
    norms = V.norm(dim=0)
    V = V[:, norms > 0] / norms[norms > 0]
    if V.shape[1] == 0:
        return V
    for _ in range(2):
        if Q is not None and Q.shape[1]:
            V = V - Q @ (Q.T @ V)
    Qv, R = torch.linalg.qr(V)
    keep = R.diagonal().abs() > drop_rtol
    Qv = Qv[:, keep]
    if Q is not None and Q.shape[1] and Qv.shape[1]:
        Qv = Qv - Q @ (Q.T @ Qv)  # one more pass: QR of nearly dependent columns can leak back into span(Q)
        Qv, _ = torch.linalg.qr(Qv)
    return Qv


def block_krylov_top_k(
    matvec: Product,
    rmatvec: Product,
    shape: tuple[int, int],
    k: int,
    start: torch.Tensor,
    *,
    block: int | None = None,
    max_basis: int | None = None,
    max_products: int | None = None,
    tol: float = DEFAULT_TOL,
) -> KrylovResult:
    """Top-k singular triplets of the operator M (``shape`` = (rows, cols)) given by ``matvec`` (X ↦ MX, X of
    shape (cols, b)) and ``rmatvec`` (Y ↦ MᵀY). ``start`` (rows, s): the initial block; its dtype and device are
    those of the computation. ``block``: how many unconverged triplets expand the basis per iteration (default
    k + 8); ``max_basis``: restart size (default max(8·block, 3k + 40, 160), keeping half on restart);
    ``max_products``: give up after this many columns (default 60·block + rows)."""
    rows, cols = shape
    small = min(rows, cols)
    if not 1 <= k <= small:
        raise ValueError(f"k={k} must be between 1 and min(shape)={small}.")
    block = block or k + 8
    max_basis = min(max_basis or max(8 * block, 3 * k + 40, 160), rows)  # Q lives in ℝ^rows
    max_products = max_products or 60 * block + rows
    keep = min(max(k + block, max_basis // 2), max_basis - 1)

    Q = _orthonormal_extension(None, start)
    if Q.shape[1] < k:  # a start block too narrow or degenerate: add coordinate vectors
        eye = torch.eye(rows, k + block, dtype=start.dtype, device=start.device)
        Q = torch.cat([Q, _orthonormal_extension(Q, eye)], dim=1)
    Q = Q[:, :max_basis]
    C = rmatvec(Q)
    G = C.T @ C  # QᵀMMᵀQ, kept up to date block by block
    products = Q.shape[1]

    while True:
        S, X, W = _rayleigh_ritz(C, G, max(block, k))
        n = S.shape[0]
        Y = Q @ W
        R = matvec(X) - Y * S
        products += n  # the residual's product
        sigma1 = float(S[0]) if n else 0.0
        res = R.norm(dim=0) / max(sigma1, torch.finfo(S.dtype).tiny)
        max_res = float(res[:k].max())
        if max_res <= tol or Q.shape[1] >= rows:
            # converged, or Q spans all of ℝ^rows (the Ritz triplets are then exact)
            return KrylovResult(S[:k], Y[:, :k], X[:, :k], True, products, max_res)
        if products >= max_products:
            return KrylovResult(S[:k], Y[:, :k], X[:, :k], False, products, max_res)

        unconverged = (res > tol).nonzero().flatten()
        new = _orthonormal_extension(Q, R[:, unconverged])
        if new.shape[1] == 0:  # nothing new to add: the residuals lie in span(Q) up to rounding
            return KrylovResult(S[:k], Y[:, :k], X[:, :k], max_res <= 1e3 * tol, products, max_res)
        if Q.shape[1] + new.shape[1] > max_basis:  # thick restart from the best Ritz vectors
            S_keep, X_keep, W_keep = _rayleigh_ritz(C, G, min(keep, Q.shape[1]))
            Q = Q @ W_keep
            C = X_keep * S_keep  # Mᵀ(QW) = CW = XΣ
            G = torch.diag(S_keep**2)
            new = _orthonormal_extension(Q, new)
            new = new[:, : max_basis - Q.shape[1]]
        C_new = rmatvec(new)
        cross = C.T @ C_new
        G = torch.cat([torch.cat([G, cross], dim=1), torch.cat([cross.T, C_new.T @ C_new], dim=1)], dim=0)
        Q = torch.cat([Q, new], dim=1)
        C = torch.cat([C, C_new], dim=1)
        products += new.shape[1]


def _rayleigh_ritz(
    C: torch.Tensor, G: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The n leading Ritz triplets of M on span(Q), from C = MᵀQ and G = CᵀC: σ (n,), X (cols, n), W (m, n).

    An eigendecomposition of the small m × m matrix G replaces an SVD of the tall C (O(m³) instead of O(cols·m²),
    and few, small kernels on a GPU). σ_j² = λ_j to rounding of σ₁²; the residual test (made with M itself, not
    with G) decides convergence, so the squaring cannot pass an inaccurate triplet.
    """
    lam, V = torch.linalg.eigh(G)
    n = min(n, lam.shape[0])
    lam, W = lam.flip(0)[:n], V.flip(1)[:, :n]
    S = lam.clamp_min(0).sqrt()
    X = (C @ W) / S.clamp_min(torch.finfo(S.dtype).tiny)
    return S, X, W
