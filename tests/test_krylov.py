"""The device-generic block Krylov top-k (the GPU route of the structured LoRA path), checked on the CPU against a
dense float64 SVD and against ARPACK, on planted spectra, clustered (Gaussian) spectra, both orientations,
rank-deficient updates, repeated singular values, and through a whole analysis of a real PEFT adapter."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import write_peft_adapter

import intrudim.spectral.structured as structured
from intrudim.spectral.intruders import intruder_ranks
from intrudim.spectral.krylov import DEFAULT_TOL, block_krylov_top_k
from intrudim.spectral.structured import core_right_vectors, core_top_k, lora_core
from intrudim.spectral.svd import thin_svd


def _operator(W: torch.Tensor):
    return (lambda X: W @ X), (lambda Y: W.T @ Y)


def _gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)


def _lora(m: int, n: int, r: int, seed: int, size: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    B = torch.randn(m, r, generator=g, dtype=torch.float64) * size / math.sqrt(m)
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    return B, A


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (250, 250), (300, 40), (30, 12), (12, 30)])
def test_generic_operator_matches_dense_svd(shape):
    W = _gaussian(*shape, seed=sum(shape))
    k = 8
    start = torch.randn(shape[0], 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = block_krylov_top_k(*_operator(W), shape, k, start)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert result.converged and result.max_residual <= DEFAULT_TOL
    torch.testing.assert_close(result.S, S[:k], rtol=1e-12, atol=0)
    # each returned vector is the reference one up to sign
    torch.testing.assert_close(
        (result.Y.T @ U[:, :k]).diagonal().abs(), torch.ones(k, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        (result.X.T @ Vh[:k].T).diagonal().abs(), torch.ones(k, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(result.Y.T @ result.Y, torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)


def test_planted_spectrum_is_recovered_exactly():
    """Known singular values 10, 9, …, separated from a flat bulk at 1: σ to rounding, vectors to 1e-12."""
    g = torch.Generator().manual_seed(7)
    m, n, k = 220, 180, 6
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sigma = torch.ones(n, dtype=torch.float64)
    sigma[:k] = torch.arange(10, 10 - k, -1, dtype=torch.float64)
    W = (U * sigma) @ V.T
    result = block_krylov_top_k(*_operator(W), (m, n), k, torch.randn(m, k, generator=g, dtype=torch.float64))
    torch.testing.assert_close(result.S, sigma[:k], rtol=1e-13, atol=0)
    torch.testing.assert_close(
        (result.Y.T @ U[:, :k]).diagonal().abs(), torch.ones(k, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_gives_up_without_converging_when_the_budget_is_spent():
    W = _gaussian(400, 400, seed=1)
    start = torch.randn(400, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = block_krylov_top_k(*_operator(W), (400, 400), 10, start, max_products=40)
    assert not result.converged
    assert result.max_residual > DEFAULT_TOL


def test_bad_k_is_refused():
    W = _gaussian(20, 10, seed=0)
    with pytest.raises(ValueError, match="k=11"):
        block_krylov_top_k(*_operator(W), (20, 10), 11, torch.ones(20, 1, dtype=torch.float64))


def _compare(core, k: int, *, vectors: bool = True) -> None:
    krylov = core_top_k(core, k, method="krylov")
    arpack = core_top_k(core, k, method="lanczos")
    dense = core_top_k(core, k, method="dense")
    torch.testing.assert_close(krylov.S, dense.S, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(krylov.S, arpack.S, rtol=1e-12, atol=1e-14)
    if vectors:
        cos_k, cos_d = krylov.max_abs_cosine(core.p), dense.max_abs_cosine(core.p)
        torch.testing.assert_close(cos_k, cos_d, atol=1e-9, rtol=0)
        torch.testing.assert_close(cos_k, arpack.max_abs_cosine(core.p), atol=1e-9, rtol=0)
        assert intruder_ranks(cos_k, 0.5) == intruder_ranks(cos_d, 0.5)


@pytest.mark.parametrize("shape", [(400, 400), (500, 300), (300, 500)])
@pytest.mark.parametrize("r", [1, 16])
def test_lora_core_on_a_clustered_gaussian_base(shape, r):
    """A Gaussian base has its top singular values packed together (the hardest case for a Krylov method)."""
    m, n = shape
    W0 = _gaussian(m, n, seed=m + 3 * n + r)
    B, A = _lora(m, n, r, seed=r)
    _compare(lora_core(thin_svd(W0), B, A, 2.0), 10)


def test_planted_intruders_are_found_by_the_krylov_route():
    """Strong random LoRA directions (σ well above the base's top) are intruders: all three methods agree."""
    m, n, r = 300, 260, 4
    W0 = _gaussian(m, n, seed=5)
    g = torch.Generator().manual_seed(11)
    B = (
        torch.randn(m, r, generator=g, dtype=torch.float64)
        / math.sqrt(m)
        * torch.tensor([6.0, 5.0, 0.3, 0.2], dtype=torch.float64)
    )
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / math.sqrt(n) * math.sqrt(n / 1.0)
    A = A / A.norm(dim=1, keepdim=True)
    core = lora_core(thin_svd(W0), B, A, 1.0)
    top = core_top_k(core, 10, method="krylov")
    ranks = intruder_ranks(top.max_abs_cosine(core.p), 0.5)
    assert ranks[:2] == [1, 2]  # the two planted directions are the top two, and new
    _compare(core, 10)


def test_update_inside_the_base_span_and_float32_cache_factors():
    """out < in: B lies inside span(U₀) (no extra rows); U₀/V₀ stored as float32 as in the cache."""
    m, n = 200, 350
    W0 = _gaussian(m, n, seed=9)
    full = thin_svd(W0)
    base32 = type(full)(U=full.U.to(torch.float32), S=full.S, Vh=full.Vh.to(torch.float32))
    B, A = _lora(m, n, 8, seed=2, size=2.0)
    core = lora_core(base32, B, A, 1.5)
    assert core.shape[0] == m  # no rows outside the base's span on the output side
    _compare(core, 10)


def test_repeated_singular_values():
    """A base whose singular values come in exact pairs: σ match; the vectors are only defined up to a rotation
    within each pair, so the check is that they are orthonormal singular vectors (small residual)."""
    g = torch.Generator().manual_seed(4)
    n = 240
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sigma = (3.0 * 0.97 ** torch.arange(n // 2, dtype=torch.float64)).repeat_interleave(2)
    W0 = (U * sigma) @ V.T
    B = torch.zeros(n, 2, dtype=torch.float64)
    A = torch.zeros(2, n, dtype=torch.float64)
    B[0, 0] = 1e-3  # a tiny update keeps the pairs (nearly) degenerate
    A[0, 5] = 1.0
    core = lora_core(thin_svd(W0), B, A, 1.0)
    _compare(core, 10, vectors=False)
    top = core_top_k(core, 10, method="krylov")
    M = core.dense()
    X = core_right_vectors(core, top)
    residual = M @ X - top.Y * top.S  # M x_j − σ_j y_j with x_j = Mᵀ y_j / σ_j
    torch.testing.assert_close(top.Y.T @ top.Y, torch.eye(10, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(residual.norm(dim=0).max()) < 1e-12 * float(top.S[0])
    # the Ritz values are the singular values of M restricted to Y: ‖Mᵀ y_j‖ = σ_j
    torch.testing.assert_close((M.T @ top.Y).norm(dim=0), top.S, rtol=1e-12, atol=0)


def test_a_stalled_krylov_run_falls_back_to_the_dense_svd(monkeypatch):
    W0 = _gaussian(400, 400, seed=2)
    B, A = _lora(400, 400, 16, seed=3)
    core = lora_core(thin_svd(W0), B, A, 2.0)
    real = structured.block_krylov_top_k
    outcomes = []

    def starved(*args, **kwargs):
        result = real(*args, **kwargs, max_products=30)
        outcomes.append(result.converged)
        return result

    monkeypatch.setattr(structured, "block_krylov_top_k", starved)
    top = core_top_k(core, 10, method="krylov")
    assert outcomes == [False]
    dense = core_top_k(core, 10, method="dense")
    torch.testing.assert_close(top.S, dense.S, rtol=1e-13, atol=0)


def test_auto_uses_arpack_on_every_device_and_krylov_when_asked(monkeypatch):
    W0 = _gaussian(300, 300, seed=8)
    B, A = _lora(300, 300, 4, seed=8)
    core = lora_core(thin_svd(W0), B, A, 2.0)
    calls = []
    real = structured._krylov_core_top_k
    monkeypatch.setattr(
        structured, "_krylov_core_top_k", lambda c, k, d: calls.append(d) or real(c, k, "cpu")
    )
    core_top_k(core, 10)
    core_top_k(core, 10, device="meta-device-for-test")
    assert calls == []  # ARPACK on the CPU: the small core is latency-bound on a GPU (measured on an H100)
    core_top_k(core, 10, method="krylov", device="meta-device-for-test")
    assert calls == ["meta-device-for-test"]
    with pytest.raises(ValueError, match="Unknown top-k method"):
        core_top_k(core, 10, method="power")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_whole_analysis_through_the_krylov_route_equals_the_default(
    tiny_models, tmp_path, monkeypatch, arch
):
    """A real PEFT adapter (LLaMA and GPT-2's Conv1D) analysed with every core solved by block Krylov, as on a GPU:
    every count, σ and cosine equals the default route's."""
    import intrudim.analysis.matrix as matrix
    from intrudim import analyze

    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=4, strength=2.0, seed=3)
    default = analyze(tiny_models[arch], adapter, use_cache=False)
    real = matrix.core_top_k
    methods = []

    def krylov_everywhere(core, k, *, method="auto", device="cpu"):
        methods.append(method)
        return real(core, k, method="krylov", device=device)

    monkeypatch.setattr(matrix, "core_top_k", krylov_everywhere)
    forced = analyze(tiny_models[arch], adapter, use_cache=False)
    assert len(methods) == len(default.matrices) > 0
    assert sum(m.intruders for m in default.matrices) > 0  # the check covers matrices with intruders
    for a, b in zip(default.matrices, forced.matrices, strict=True):
        assert a.intruder_ranks == b.intruder_ranks
        assert a.singular_values == pytest.approx(b.singular_values, rel=1e-11, abs=1e-13)
        assert a.max_abs_cos == pytest.approx(b.max_abs_cos, abs=1e-9)


def test_repair_triplets_through_the_krylov_route(monkeypatch):
    """Repair's top triplets (U, σ, V of W₀ + sBA) are the same through block Krylov as through the default route."""
    import intrudim.spectral.repair as spectral_repair

    m, n = 360, 280
    W0 = _gaussian(m, n, seed=21)
    B, A = _lora(m, n, 8, seed=21, size=4.0)
    base = thin_svd(W0)
    default = spectral_repair.lora_top_triplets(base, B, A, 1.0, 10)
    real = spectral_repair.core_top_k
    monkeypatch.setattr(
        spectral_repair, "core_top_k", lambda core, k, device="cpu": real(core, k, method="krylov")
    )
    forced = spectral_repair.lora_top_triplets(base, B, A, 1.0, 10)
    torch.testing.assert_close(forced.S, default.S, rtol=1e-12, atol=0)
    signs = (forced.U * default.U).sum(dim=0).sign()
    torch.testing.assert_close(forced.U * signs, default.U, atol=1e-9, rtol=0)
    torch.testing.assert_close(forced.V * signs, default.V, atol=1e-9, rtol=0)
    Wt = W0 + B @ A
    torch.testing.assert_close(Wt @ forced.V, forced.U * forced.S, atol=1e-11, rtol=0)
