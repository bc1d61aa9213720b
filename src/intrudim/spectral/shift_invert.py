"""Top-k eigenpairs of a diagonal-plus-low-rank matrix by shift-and-invert Lanczos, the shift certified (issue 28).

Both structured cores reduce the top-k to the top eigenpairs of a symmetric

    N = diag(d) + G·M·Gᵀ        (n × n, G: n × m, M: m × m symmetric and invertible, m = 2r ≪ n)

(:class:`~intrudim.spectral.structured.GramCore`'s N itself; a LoRA core's M·Mᵀ). Plain Lanczos on N converges at
a rate set by the top gaps relative to the whole spectrum's width: on a clustered base spectrum (a random init's
Marchenko–Pastur top, where σ₁₀/σ₁ ≈ 0.99) a weak update needs 300–1,900 products. Lanczos on (σI − N)⁻¹ with σ just
above λ₁ sees the top eigenvalues as 1/(σ − λ), far apart from the rest: 30–80 products on the same cores. The
inverse costs what a product with N costs, by Woodbury (E = (σI − diag(d))⁻¹, a positive diagonal):

    (σI − N)⁻¹ = E + (E·G) K⁻¹ (E·G)ᵀ,    K = M⁻¹ − Gᵀ E G        (m × m, formed once per shift)

**The shift must lie above λ₁**, or the top eigenvalues are not the largest of the inverse. It is certified by
inertia (Haynsworth): the block matrix [[diag(d) − σ, G], [Gᵀ, −M⁻¹]] has the Schur complements N − σ and
−K, so for σ > max d the number of eigenvalues of N above σ is (negative eigenvalues of K) − (negative eigenvalues of
M⁻¹). Shifts are tried from just above a Ritz estimate of λ₁ upwards until that number is 0; the last, Weyl's bound
max d + λ₁(G·M·Gᵀ), needs no proof but is taken only when the closer ones fail.

**The result is checked, not trusted**: the Lanczos vectors are rotated by a Rayleigh–Ritz step with N itself (the
eigenvalues are then N's Rayleigh quotients, not 1/μ transformed back), and each pair's residual ‖N y − λ y‖ must be
within :data:`RESIDUAL_RTOL` of λ₁, what ARPACK reaches on N directly. Anything else — a singular K, a shift that
cannot be certified, a residual above that, ARPACK not converging — returns None, and the caller takes plain Lanczos.
"""

from __future__ import annotations

import numpy as np

CLUSTERED_TOP = 0.8
"""The route is taken only where the diagonal's top is clustered: its (2k + 1)-th largest entry (ARPACK's basis
size) at least this fraction of the largest. There plain Lanczos needs 200–1,900 products on a 4096² core (a random
init's Marchenko–Pastur top, d₂₁/d₁ ≈ 0.95) and this route 45–70: 2–3× faster. On a trained matrix's spread top
(d₂₁/d₁ ≈ 0.3–0.7) plain Lanczos needs 45–120, and the shift's set-up and the inverse's Lanczos cost as much as they
save (measured on 2 cores, benchmarks/RESULTS.md §13)."""

RESIDUAL_RTOL = 1e-14
"""Largest accepted ‖N y − λ y‖ / λ₁ of a returned pair (plain ARPACK at ``tol=0`` reaches ~1e-15)."""

REFINED_RTOL = 1.5e-15
"""Residuals above this fraction of λ₁ get another Rayleigh–Ritz step on span[Y, N·Y − Y·Λ] (at most
:data:`REFINEMENTS`): one takes the ~3e-14 that a strong update's ill-conditioned K leaves to ~3e-15."""

REFINEMENTS = 2

SHIFT_MARGINS = (1e-3, 1e-2, 1e-1)
"""Shifts tried, as (1 + margin) × a lower estimate of λ₁: the closest one certified to lie above λ₁ is used."""

SHIFT_FLOOR = 1e-6
"""The shift is at least max d · (1 + this): K stays well away from singular when the update is nearly zero."""

SHIFT_SPREAD = 0.02
"""The first shift lies this fraction of the top's spread (max d − d's (2k + 1)-th largest) above max d. Closer, the
inverse's rounding, relative to its norm 1/(σ − λ₁), swamps the k-th pair's 1/(σ − λ_k): residuals of 4e-14·λ₁
were measured at σ = max d·(1 + 1e-6) on a weak update of a random 4096² base."""


def diagonal_lowrank_top_k(
    d: np.ndarray, G: np.ndarray, M: np.ndarray, M_inv: np.ndarray, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """The top ``k`` eigenpairs of diag(d) + G·M·Gᵀ (eigenvalues descending, eigenvectors (n, k) orthonormal), or
    None when the route does not pay (d's top is not clustered: :data:`CLUSTERED_TOP`) or cannot certify its result;
    the caller then runs plain Lanczos.

    ``M_inv`` is M's inverse (both structured cores know it in closed form). All arrays float64."""
    n = G.shape[0]
    if not (0 < k < n - 1) or 2 * k + 1 >= n or not np.all(np.isfinite(d)) or not np.all(np.isfinite(G)):
        return None
    d_max = float(d.max())
    below_top = float(np.partition(d, n - 2 * k - 1)[n - 2 * k - 1])  # d's (2k + 1)-th largest entry
    if d_max <= 0.0 or below_top < CLUSTERED_TOP * d_max:
        return None  # a spread top: plain Lanczos is as fast (CLUSTERED_TOP)
    negative_of_M_inv = int((np.linalg.eigvalsh(M_inv) < 0).sum())
    shifted = _certified_shift(d, G, M, M_inv, d_max, d_max - below_top, negative_of_M_inv, k)
    if shifted is None:
        return None
    E, F, K_inv = shifted
    v0 = np.random.default_rng(seed).standard_normal(n)
    from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh  # imported here: see svd._arpack_top_k

    def inverse(x: np.ndarray) -> np.ndarray:
        X = x.reshape(n, -1)
        return (E[:, None] * X + F @ (K_inv @ (F.T @ X))).reshape(x.shape)

    operator = LinearOperator((n, n), matvec=inverse, rmatvec=inverse, dtype=np.float64)
    try:
        _, V = eigsh(operator, k=k, which="LM", tol=0, v0=v0)
    except (ArpackError, np.linalg.LinAlgError):
        return None
    # Rayleigh–Ritz with N itself: the eigenvalues as N's Rayleigh quotients, the residuals as the check
    evals, V, residual = _rayleigh_ritz(d, G, M, V, k)
    scale = max(float(evals[0]), d_max)
    for _ in range(REFINEMENTS):  # the inverse's rounding (K's condition) can leave residuals of ~1e-14·λ₁
        if not float(residual.max()) > REFINED_RTOL * scale:
            break
        basis = _orthonormal(np.concatenate([V, _apply(d, G, M, V) - V * evals[None, :]], axis=1))
        if basis is None:
            break
        evals, V, residual = _rayleigh_ritz(d, G, M, basis, k)
    if not np.all(np.isfinite(residual)) or float(residual.max()) > RESIDUAL_RTOL * scale:
        return None
    return evals, V


def _ritz_estimate(d: np.ndarray, G: np.ndarray, M: np.ndarray, gram: np.ndarray, k: int) -> float:
    """The top Ritz value of N on span[G, the unit vectors of d's k largest entries] (a lower bound of λ₁), from the
    small Gram and projected matrices alone: no n × (k + m) product but Gᵀ(d·G)."""
    top = np.argpartition(d, -k)[-k:]
    G_top = G[top]  # (k, m): the unit vectors' inner products with G's columns
    NG_small = gram @ M @ gram  # Gᵀ (G M Gᵀ) G
    S = np.block([[np.eye(k), G_top], [G_top.T, gram]])
    cross = d[top][:, None] * G_top + G_top @ M @ gram  # (unit vectors)ᵀ N G
    H = np.block([[np.diag(d[top]) + G_top @ M @ G_top.T, cross], [cross.T, G.T @ (d[:, None] * G) + NG_small]])
    w, Q = np.linalg.eigh((S + S.T) / 2)
    keep = w > 1e-12 * max(float(w[-1]), 1e-300)  # S is singular when G has dependent or zero columns
    W = Q[:, keep] / np.sqrt(w[keep])[None, :]
    reduced = W.T @ H @ W
    return float(np.linalg.eigvalsh((reduced + reduced.T) / 2)[-1])


def _orthonormal(X: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis of span(X) by Cholesky QR twice (LAPACK's Householder QR of a 4096 × 20 block takes
    ~5 ms here, this ~0.2), or None when X's columns are too close to dependent for it."""
    for _ in range(2):
        try:
            R = np.linalg.cholesky(X.T @ X).T
        except np.linalg.LinAlgError:
            return None
        X = np.linalg.solve(R.T, X.T).T
    return X


def _apply(d: np.ndarray, G: np.ndarray, M: np.ndarray, X: np.ndarray) -> np.ndarray:
    return d[:, None] * X + G @ (M @ (G.T @ X))


def _rayleigh_ritz(
    d: np.ndarray, G: np.ndarray, M: np.ndarray, basis: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` Ritz pairs of N in span(``basis``) (orthonormal columns), descending, and their residual norms."""
    NB = _apply(d, G, M, basis)
    H = basis.T @ NB
    evals, Z = np.linalg.eigh((H + H.T) / 2)
    order = np.argsort(evals)[::-1][:k]
    evals, Z = evals[order], Z[:, order]
    V, NV = basis @ Z, NB @ Z
    return evals, V, np.linalg.norm(NV - V * evals[None, :], axis=0)


def middle(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M = [[0, I], [I, S]] (2r × 2r, S = ``gram``) of both structured cores' form, and its inverse [[−S, I], [I, 0]]:
    a Gram core's N = Σ₀² + [C, B̃]·M·[C, B̃]ᵀ with S = AAᵀ, a LoRA core's M·Mᵀ with S = ÃᵀÃ."""
    r = int(gram.shape[0])
    M, M_inv = np.zeros((2 * r, 2 * r)), np.zeros((2 * r, 2 * r))
    M[:r, r:] = M[r:, :r] = M_inv[:r, r:] = M_inv[r:, :r] = np.eye(r)
    M[r:, r:] = gram
    M_inv[:r, :r] = -gram
    return M, M_inv


def lora_core_top_k(
    S0: np.ndarray, B_coords: np.ndarray, A_coords: np.ndarray, p: int, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The top-k singular values and left vectors of a LoRA core M = diag(Σ₀, 0) + B̃Ãᵀ
    (:class:`~intrudim.spectral.structured.LoraCore`'s arrays) from the eigenpairs of M·Mᵀ = diag(Σ₀², 0) +
    G·[[0, I], [I, ÃᵀÃ]]·Gᵀ, G = [D̃Ã, B̃] (D̃ the core's diagonal part), by :func:`diagonal_lowrank_top_k`; the
    singular values then from an SVD of Mᵀ·Y, as accurate as ``svds``'s. None when that route returns None."""
    rows = B_coords.shape[0]
    DA = np.zeros((rows, A_coords.shape[1]))
    DA[:p] = S0[:, None] * A_coords[:p]
    d = np.zeros(rows)
    d[:p] = S0**2
    found = diagonal_lowrank_top_k(d, np.concatenate([DA, B_coords], axis=1), *middle(A_coords.T @ A_coords), k)
    if found is None:
        return None
    Y = found[1]
    X = A_coords @ (B_coords.T @ Y)  # Mᵀ·Y (cols, k)
    X[:p] += S0[:, None] * Y[:p]
    _, S, Qt = np.linalg.svd(X, full_matrices=False)
    return S, Y @ Qt.T


def _certified_shift(
    d: np.ndarray, G: np.ndarray, M: np.ndarray, M_inv: np.ndarray, d_max: float, top_spread: float, negatives: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """E = (σ − d)⁻¹, F = E·G and K⁻¹ for the closest certified shift σ above λ₁ (module docstring), or None.
    ``top_spread``: max d − d's (2k + 1)-th largest entry (:data:`SHIFT_SPREAD`).

    First σ just above max d: when the inertia count puts no eigenvalue of N above it (a weak update) it is the
    shift; when it puts k or more (a strong update, whose top-k stand apart: plain Lanczos is as fast) None.
    Otherwise λ₁ is estimated from below by the top Ritz value of N on span[G, the unit vectors of d's k largest
    entries]; shifts a little above it (:data:`SHIFT_MARGINS`) are tried until the count is 0, then Weyl's bound
    max d + λ₁(G·M·Gᵀ), which needs no check."""

    def factors(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        E = 1.0 / (sigma - d)
        F = E[:, None] * G
        K = M_inv - G.T @ F
        K = (K + K.T) / 2
        return E, F, K, int((np.linalg.eigvalsh(K) < 0).sum()) - negatives  # eigenvalues of N above σ

    E, F, K, above = factors(d_max + max(SHIFT_FLOOR * d_max, SHIFT_SPREAD * top_spread))
    if above >= k:
        return None
    if above > 0:
        gram = G.T @ G
        gram = (gram + gram.T) / 2
        w, Q = np.linalg.eigh(gram)
        root = (
            Q * np.sqrt(np.clip(w, 0.0, None))[None, :]
        ) @ Q.T  # (GᵀG)^½: G M Gᵀ's eigenvalues, root·M·root's
        weyl = d_max + max(float(np.linalg.eigvalsh(root @ M @ root)[-1]), 0.0)  # λ₁ ≤ max d + λ₁(G M Gᵀ)
        estimate = max(_ritz_estimate(d, G, M, gram, k), d_max)  # ≤ λ₁
        shifts = (estimate + max(margin * estimate, SHIFT_SPREAD * top_spread) for margin in SHIFT_MARGINS)
        for sigma in [shift for shift in shifts if shift < weyl]:
            E, F, K, above = factors(sigma)
            if above == 0:
                break
        else:
            E, F, K, _ = factors(weyl)  # Weyl: no eigenvalue above, whatever rounding makes of the count
    try:
        return E, F, np.linalg.inv(K)
    except np.linalg.LinAlgError:
        return None
