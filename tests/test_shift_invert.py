"""The shift-and-invert top-k of a diagonal-plus-low-rank matrix (issue 28): where the base's top singular values are
clustered (a random init's), both structured cores take it; every number is checked against a dense float64 SVD of
W₀ + s·B·A and against plain Lanczos on the same core, the inertia count that certifies the shift against a dense
eigendecomposition, and each way the route declines (a spread top, a strong update, a result it cannot certify)
against the plain route's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intrudim.spectral import shift_invert
from intrudim.spectral.shift_invert import diagonal_lowrank_top_k, middle
from intrudim.spectral.structured import GramCore, LoraCore, core_top_k, gram_core, lora_core
from intrudim.spectral.svd import SVDFactors, thin_svd

K = 10


def _clustered_base(m: int, n: int, seed: int, spread: float = 0.02) -> torch.Tensor:
    """W₀ with random singular vectors and singular values packed at the top: 1 − spread·i/p (a random init's
    Marchenko–Pastur top is like this: σ₂₁/σ₁ ≈ 0.97 at 4096²)."""
    g = torch.Generator().manual_seed(seed)
    p = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, p, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=torch.float64))
    S = 1.0 - spread * torch.arange(p, dtype=torch.float64) / p - 0.5 * (torch.arange(p) >= 40).double()
    return U @ torch.diag(S) @ V.T


def _update(m: int, n: int, seed: int, strength: float, r: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.randn(m, r, generator=g, dtype=torch.float64) * strength,
            torch.randn(r, n, generator=g, dtype=torch.float64) / n**0.5)  # fmt: skip


def _route_and_plain(core: LoraCore | GramCore, monkeypatch) -> tuple:
    """The core's top-k by the default route and with the shift-and-invert route turned off (plain Lanczos), and
    whether the default took the new route."""
    import intrudim.spectral.structured as structured

    taken: list[bool] = []
    route = "diagonal_lowrank_top_k" if isinstance(core, GramCore) else "lora_core_top_k"  # the function each core calls
    original = getattr(structured, route)

    def recording(*args, **kwargs):
        found = original(*args, **kwargs)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(structured, route, recording)
    routed = core_top_k(core, K, method="lanczos")
    monkeypatch.setattr(structured, route, lambda *a, **kw: None)
    plain = core_top_k(core, K, method="lanczos")
    monkeypatch.undo()
    return routed, plain, taken == [True]


def _signed(Y: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return Y * torch.sign((Y * reference).sum(0))[None, :]


@pytest.mark.parametrize("shape", [(260, 260), (220, 400), (420, 220)])
@pytest.mark.parametrize("strength", [1e-4, 3e-3, 3e-2])
def test_the_route_on_a_clustered_base_equals_the_dense_float64_svd_and_plain_lanczos(shape, strength, monkeypatch):
    m, n = shape
    W0 = _clustered_base(m, n, seed=m + n)
    B, A = _update(m, n, seed=m + n, strength=strength)
    Wt = W0 + 2.0 * B @ A
    full = thin_svd(W0)
    base = SVDFactors(U=full.U, S=full.S, Vh=None) if m <= n else full
    core = gram_core(base, W0, B, A, 2.0) if m <= n else lora_core(base, B, A, 2.0)
    routed, plain, taken = _route_and_plain(core, monkeypatch)
    assert taken, "a weak-to-moderate update of a clustered base takes the shift-and-invert route"
    reference = thin_svd(Wt)
    p = int(full.S.shape[0])
    torch.testing.assert_close(routed.S, reference.S[:K], rtol=1e-12, atol=0)
    torch.testing.assert_close(routed.S, plain.S, rtol=1e-12, atol=0)
    expected_cos = (reference.U[:, :K].T @ full.U).abs().amax(dim=1)
    torch.testing.assert_close(routed.max_abs_cosine(p), expected_cos, rtol=0, atol=1e-9)
    torch.testing.assert_close(routed.max_abs_cosine(p), plain.max_abs_cosine(p), rtol=0, atol=1e-9)
    # the left vectors themselves, in the output space: u = [U₀ Q_B]·y for a LoRA core, U₀·y for a Gram core
    if isinstance(core, GramCore):
        U = full.U @ routed.Y
    else:
        Q_B = lora_core(full, B, A, 2.0).Q_out  # the analysis's cores carry no Q_B; the repair's do
        U = torch.cat([full.U, Q_B], dim=1) @ routed.Y if Q_B is not None else full.U @ routed.Y[:p]
    torch.testing.assert_close(_signed(U, reference.U[:, :K]), reference.U[:, :K], rtol=0, atol=1e-9)


def test_the_inertia_count_is_the_number_of_eigenvalues_above_the_shift():
    """Haynsworth: for σ > max d, (negative eigenvalues of M⁻¹ − Gᵀ(σ − d)⁻¹G) − (negative eigenvalues of M⁻¹) is
    the number of eigenvalues of diag(d) + G·M·Gᵀ above σ, for every σ on a grid through the top of the spectrum."""
    rng = np.random.default_rng(3)
    n, r = 200, 5
    d = np.sort(rng.uniform(0.5, 1.0, n))[::-1]
    G = np.concatenate([rng.standard_normal((n, r)) * 0.1, rng.standard_normal((n, r)) * 0.05], axis=1)
    M, M_inv = middle(np.eye(r) * 0.3 + 0.01)
    evals = np.linalg.eigvalsh(np.diag(d) + G @ M @ G.T)
    negatives = int((np.linalg.eigvalsh(M_inv) < 0).sum())
    for sigma in np.linspace(d[0] * 1.0001, evals[-1] * 1.05, 40):
        K = M_inv - G.T @ ((1.0 / (sigma - d))[:, None] * G)
        counted = int((np.linalg.eigvalsh((K + K.T) / 2) < 0).sum()) - negatives
        assert counted == int((evals > sigma).sum()), sigma


def _gram_arrays(core: GramCore) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    M, M_inv = middle(core.AAt.numpy())
    return (core.S0**2).numpy(), torch.cat([core.C, core.B_coords], dim=1).numpy(), M, M_inv


def test_the_route_declines_a_spread_top_and_a_strong_update_and_plain_lanczos_answers(monkeypatch):
    m = n = 260
    g = torch.Generator().manual_seed(5)
    spread = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5  # a Gaussian's top: d₂₁/d₁ ≈ 0.6 at 260²
    spread_full = thin_svd(spread)
    B, A = _update(m, n, seed=5, strength=3e-3)
    spread_core = gram_core(SVDFactors(U=spread_full.U, S=spread_full.S, Vh=None), spread, B, A, 2.0)
    assert diagonal_lowrank_top_k(*_gram_arrays(spread_core), K) is None

    clustered = _clustered_base(m, n, seed=6)
    full = thin_svd(clustered)
    B, A = _update(m, n, seed=6, strength=3.0, r=16)  # its 16 directions far above the base's top
    strong = gram_core(SVDFactors(U=full.U, S=full.S, Vh=None), clustered, B, A, 2.0)
    d, G, M, M_inv = _gram_arrays(strong)
    assert int((np.linalg.eigvalsh(np.diag(d) + G @ M @ G.T) > d.max()).sum()) >= K
    assert diagonal_lowrank_top_k(d, G, M, M_inv, K) is None
    reference = thin_svd(clustered + 2.0 * B @ A)
    torch.testing.assert_close(core_top_k(strong, K, method="lanczos").S, reference.S[:K], rtol=1e-12, atol=0)

    # a result the route cannot certify (here: no residual is small enough) goes to plain Lanczos, same numbers
    B, A = _update(m, n, seed=6, strength=3e-3)
    weak = gram_core(SVDFactors(U=full.U, S=full.S, Vh=None), clustered, B, A, 2.0)
    assert diagonal_lowrank_top_k(*_gram_arrays(weak), K) is not None
    monkeypatch.setattr(shift_invert, "RESIDUAL_RTOL", 0.0)
    assert diagonal_lowrank_top_k(*_gram_arrays(weak), K) is None
    reference = thin_svd(clustered + 2.0 * B @ A)
    top = core_top_k(weak, K, method="lanczos")
    torch.testing.assert_close(top.S, reference.S[:K], rtol=1e-12, atol=0)
    torch.testing.assert_close(top.max_abs_cosine(full.U.shape[1]),
                               (reference.U[:, :K].T @ full.U).abs().amax(dim=1), rtol=0, atol=1e-9)  # fmt: skip


def test_a_zero_update_and_a_zero_base_are_answered(monkeypatch):
    """LoRA's B starts at zero: G has zero columns (its Gram matrix is singular) and N is the diagonal itself."""
    m = n = 240
    W0 = _clustered_base(m, n, seed=9)
    full = thin_svd(W0)
    A = _update(m, n, seed=9, strength=1.0)[1]
    core = gram_core(SVDFactors(U=full.U, S=full.S, Vh=None), W0, torch.zeros(m, 8, dtype=torch.float64), A, 2.0)
    routed, plain, taken = _route_and_plain(core, monkeypatch)
    assert taken
    torch.testing.assert_close(routed.S, full.S[:K], rtol=1e-12, atol=0)
    torch.testing.assert_close(routed.max_abs_cosine(m), torch.ones(K, dtype=torch.float64), rtol=0, atol=1e-12)
    assert diagonal_lowrank_top_k(np.zeros(50), np.ones((50, 4)), *middle(np.eye(2)), 5) is None
