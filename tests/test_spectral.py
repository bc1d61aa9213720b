"""Spectral core against an independent dense float64 reference and planted cases."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import dense_reference

from intrudim.spectral.intruders import (
    count_intruders,
    epsilon_sweep,
    intruder_energy_share,
    intruder_ranks,
    k_sweep,
    max_abs_cosine,
    random_vector_max_cosine,
)
from intrudim.spectral.structured import core_full_spectrum, core_top_k, lora_core
from intrudim.spectral.svd import effective_rank, low_rank_singular_values, thin_svd, top_k_svd
from intrudim.spectral.toy import random_vector_baseline, toy_lambda_sweep


def decaying_matrix(m: int, n: int, seed: int, decay: float = 0.9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, p, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=torch.float64))
    sigma = 3.0 * decay ** torch.arange(p, dtype=torch.float64)
    return (U * sigma) @ V.T


SHAPES = [(64, 64), (96, 40), (40, 96), (200, 200), (300, 120), (120, 300)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", [1, 4])
@pytest.mark.parametrize("method", ["dense", "lanczos", "krylov"])
def test_structured_top_k_matches_dense_reference(shape, r, method):
    m, n = shape
    W0 = decaying_matrix(m, n, seed=m * 7 + n)
    g = torch.Generator().manual_seed(r)
    B = torch.randn(m, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    scale = 2.0
    k = 10
    base = thin_svd(W0)
    core = lora_core(base, B, A, scale)
    top = core_top_k(core, k, method=method)
    ref = dense_reference(W0, W0 + scale * B @ A, k, 0.5)
    torch.testing.assert_close(top.S, ref["sigma"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(top.max_abs_cosine(core.p), ref["max_cos"], rtol=0, atol=1e-8)
    assert intruder_ranks(top.max_abs_cosine(core.p), 0.5) == ref["ranks"]
    Wt = W0 + scale * B @ A
    assert core.frobenius_sq() == pytest.approx(float((Wt**2).sum()), rel=1e-10)


@pytest.mark.parametrize("shape", [(150, 60), (60, 150), (80, 80)])
def test_planted_intruder_is_found_at_rank_one_in_both_orientations(shape):
    """A direction outside the base's top space, with σ above σ₁(W₀), must be an intruder at rank 1."""
    m, n = shape
    W0 = decaying_matrix(m, n, seed=11)
    g = torch.Generator().manual_seed(5)
    # For out > in, put the new output direction partly outside span(U₀): the case the thin basis misses.
    u = torch.randn(m, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, n, generator=g, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    base = thin_svd(W0)
    core = lora_core(base, u, v, 10.0)
    top = core_top_k(core, 10)
    ranks = intruder_ranks(top.max_abs_cosine(core.p), 0.5)
    assert ranks == [1]
    assert float(top.S[0]) == pytest.approx(float(torch.linalg.matrix_norm(W0 + 10.0 * u @ v, 2)), rel=1e-10)
    assert dense_reference(W0, W0 + 10.0 * u @ v, 10, 0.5)["ranks"] == [1]


def test_out_greater_than_in_needs_the_residual_basis():
    """When out > in, an update purely outside span(U₀) is invisible to the thin U₀ unless carried."""
    m, n = 120, 40
    W0 = decaying_matrix(m, n, seed=3)
    base = thin_svd(W0)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(m, 1, generator=g, dtype=torch.float64)
    u = u - base.U @ (base.U.T @ u)  # entirely orthogonal to every base left vector
    u = u / u.norm()
    v = torch.randn(1, n, generator=g, dtype=torch.float64)
    v = v / v.norm()
    core = lora_core(base, u, v, 5.0)
    assert core.shape[0] == n + 1  # the residual direction is carried
    top = core_top_k(core, 5)
    mc = top.max_abs_cosine(core.p)
    ref = dense_reference(W0, W0 + 5.0 * u @ v, 5, 0.5)
    torch.testing.assert_close(mc, ref["max_cos"], rtol=0, atol=1e-8)
    assert float(mc[0]) < 0.5  # a new direction: an intruder the thin U₀ alone could not even represent


def test_full_ft_like_small_dense_perturbation_has_no_intruders():
    W0 = decaying_matrix(128, 96, seed=9)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(128, 96, generator=g, dtype=torch.float64)
    Wt = W0 + 0.01 * noise * (W0.norm() / noise.norm())
    top = top_k_svd(Wt, 10)
    base = thin_svd(W0)
    mc = max_abs_cosine(top.U, base.U)
    assert count_intruders(mc, 0.5) == 0
    assert dense_reference(W0, Wt, 10, 0.5)["count"] == 0


@pytest.mark.parametrize("shape", [(500, 300), (300, 500), (400, 400)])
def test_dense_top_k_lanczos_matches_full_svd(shape):
    W = decaying_matrix(*shape, seed=2, decay=0.99)
    top = top_k_svd(W, 10)
    full = thin_svd(W)
    torch.testing.assert_close(top.S, full.S[:10], rtol=1e-10, atol=1e-12)
    # singular vectors agree up to sign
    torch.testing.assert_close((top.U.T @ full.U[:, :10]).abs().diagonal(), torch.ones(10, dtype=torch.float64), rtol=0, atol=1e-8)


def test_low_rank_singular_values_and_effective_rank():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(50, 3, generator=g, dtype=torch.float64)
    A = torch.randn(3, 70, generator=g, dtype=torch.float64)
    dense = torch.linalg.svdvals(1.5 * B @ A)
    torch.testing.assert_close(low_rank_singular_values(B, A, 1.5), dense[:3], rtol=1e-10, atol=1e-12)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(5)) == 0.0
    sigma = torch.tensor([3.0, 2.0, 1.0])
    p = sigma / sigma.sum()
    assert effective_rank(sigma) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def test_sweeps_and_energy_share():
    mc = torch.tensor([0.05, 0.95, 0.35, 0.65, 0.99], dtype=torch.float64)
    assert intruder_ranks(mc, 0.5) == [1, 3]
    sweep = epsilon_sweep(mc)
    assert sweep[0.1] == 1 and sweep[0.5] == 2 and sweep[0.7] == 3 and sweep[0.9] == 3
    assert k_sweep(mc, 0.5, [1, 2, 5]) == {1: 1, 2: 1, 5: 2}
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    assert intruder_energy_share(sigma, [1, 3], 20.0) == pytest.approx((9 + 1) / 20)
    assert intruder_energy_share(sigma, [], 20.0) == 0.0


def test_core_full_spectrum_gives_every_singular_value():
    W0 = decaying_matrix(60, 40, seed=4)
    g = torch.Generator().manual_seed(0)
    B = torch.randn(60, 2, generator=g, dtype=torch.float64)
    A = torch.randn(2, 40, generator=g, dtype=torch.float64)
    core = lora_core(thin_svd(W0), B, A, 1.0)
    full = core_full_spectrum(core)
    ref = torch.linalg.svdvals(W0 + B @ A)
    torch.testing.assert_close(full.S[:40], ref, rtol=1e-9, atol=1e-10)
    ref_all = dense_reference(W0, W0 + B @ A, 40, 0.5)
    torch.testing.assert_close(full.max_abs_cosine(core.p)[:40], ref_all["max_cos"], rtol=0, atol=1e-8)


def test_toy_model_creates_an_intruder_above_sigma_max():
    sweep = toy_lambda_sweep(200, (0.0, 0.1, 1.5, 3.0), seed=0)
    by_ratio = {p.lam_over_sigma_max: p for p in sweep.points}
    assert by_ratio[0.0].intruders == 0
    assert by_ratio[0.1].intruders == 0
    for ratio in (1.5, 3.0):
        point = by_ratio[ratio]
        assert point.v_rank == 1 and point.intruders >= 1 and 1 in point.intruder_ranks
        assert point.v_alignment > 0.9
        assert point.v_max_cos_to_base < 0.5


def test_random_vector_baseline_follows_theory():
    points = random_vector_baseline((64, 512, 4096), trials=100, seed=0)
    for p in points:
        assert p.minimum_possible < p.mean_max_cos < p.theory * 1.15
        assert p.mean_max_cos > 0.6 * p.theory
    assert random_vector_max_cosine(768) == pytest.approx(0.138, abs=0.002)
    assert random_vector_max_cosine(4096) == pytest.approx(0.066, abs=0.001)


# ---------------------------------------------------------------------------------- cold cache: the Gram route


def _spectrum_matrix(m: int, n: int, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, sigma.numel(), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, sigma.numel(), generator=g, dtype=torch.float64))
    return U @ torch.diag(sigma) @ V.T


@pytest.mark.parametrize("shape", [(384, 384), (1536, 384), (384, 1536), (700, 1000)])
@pytest.mark.parametrize("spectrum", ["decaying", "gaussian"])
def test_base_svd_from_the_gram_matrix_equals_lapacks_svd(shape: tuple[int, int], spectrum: str) -> None:
    """The cold-cache route (eigh of the smaller Gram matrix) gives the float64 SVD's factors: σ to 1e-12 and the
    same singular vectors up to sign, on both sides, for wide, tall and square W. A weight-like decaying spectrum
    (σ from 1 down to 0.01) agrees to |cos| ≥ 1 − 1e-12; a Gaussian matrix, whose smallest singular values crowd
    together near 0, to 1 − 1e-6 in its worst vector (an angle of 1.4e-3: the recovered side of a tight cluster;
    float32 storage rounds every vector by 6e-8 anyway)."""
    from intrudim.spectral.svd import base_svd, thin_svd

    m, n = shape
    if spectrum == "decaying":
        W = _spectrum_matrix(m, n, torch.logspace(0, -2, min(m, n), dtype=torch.float64), seed=1)
        tolerance = 1e-12
    else:
        W = torch.randn(m, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / n**0.5
        tolerance = 1e-6
    fast, reference = base_svd(W), thin_svd(W)
    assert fast.U.shape == reference.U.shape and fast.Vh.shape == reference.Vh.shape
    assert torch.allclose(fast.S, reference.S, rtol=0, atol=1e-12 * float(reference.S[0]))
    assert float((fast.U * reference.U).sum(0).abs().min()) > 1 - tolerance
    assert float((fast.Vh * reference.Vh).sum(1).abs().min()) > 1 - tolerance
    assert torch.allclose(fast.U @ torch.diag(fast.S) @ fast.Vh, W, atol=1e-12)
    assert not torch.equal(fast.U, reference.U)  # the Gram route was taken, not the fallback


def test_base_svd_takes_lapacks_svd_for_ill_conditioned_and_rank_deficient_matrices() -> None:
    """Squaring W squares its condition number: past the limit (or when the float64 probe check fails) the exact
    LAPACK factors are returned, bit for bit."""
    from intrudim.spectral.svd import base_svd, thin_svd

    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(400, 400, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(400, 400, generator=g, dtype=torch.float64))
    ill = U @ torch.diag(torch.logspace(0, -9, 400, dtype=torch.float64)) @ V.T
    low_rank = torch.randn(400, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 600, generator=g, dtype=torch.float64)
    for W in (ill, low_rank):
        fast, reference = base_svd(W), thin_svd(W)
        assert torch.equal(fast.S, reference.S) and torch.equal(fast.U, reference.U)


@pytest.mark.parametrize("shape", [(500, 500), (400, 700), (700, 400)])
def test_base_svd_resolves_small_singular_values_of_ill_conditioned_matrices(shape: tuple[int, int]) -> None:
    """κ = 2e5 (the attention matrices of a 7B-shaped layer reach 1.1e5): the Gram route re-solves the singular
    values below GRAM_SPLIT·σ₁ from the rows of UᵀW, so both sides stay orthonormal to ~1e-10 and match LAPACK's
    vectors (distinct σ, geometric spacing) to |cos| ≥ 1 − 1e-9, instead of falling back to LAPACK's SVD."""
    from intrudim.spectral.svd import GRAM_SPLIT, base_svd, thin_svd

    m, n = shape
    p = min(m, n)
    sigma = torch.logspace(0, -5.3, p, dtype=torch.float64)
    assert int((sigma < GRAM_SPLIT).sum()) > p // 3  # many rows take the second solve
    W = _spectrum_matrix(m, n, sigma, seed=m + n)
    fast, reference = base_svd(W), thin_svd(W)
    assert not torch.equal(fast.U, reference.U)  # the Gram route was taken, not the fallback
    torch.testing.assert_close(fast.S, reference.S, rtol=0, atol=1e-13)
    assert float((fast.U * reference.U).sum(0).abs().min()) > 1 - 1e-9
    assert float((fast.Vh * reference.Vh).sum(1).abs().min()) > 1 - 1e-9
    eye = torch.eye(p, dtype=torch.float64)
    assert float((fast.U.T @ fast.U - eye).abs().max()) < 1e-9
    assert float((fast.Vh @ fast.Vh.T - eye).abs().max()) < 1e-9
    assert torch.allclose(fast.U @ torch.diag(fast.S) @ fast.Vh, W, atol=1e-13)


def test_without_the_second_solve_the_small_singular_vectors_lose_orthogonality(monkeypatch) -> None:
    """The planted case above, with the split disabled: the recovered side's bottom rows are no longer orthonormal
    to float32 precision, so the probe check sends the matrix to LAPACK (the second solve is what keeps it)."""
    import intrudim.spectral.svd as svd

    W = _spectrum_matrix(500, 500, torch.logspace(0, -5.3, 500, dtype=torch.float64), seed=1000)
    monkeypatch.setattr(svd, "GRAM_SPLIT", 0.0)
    fast, reference = svd.base_svd(W), svd.thin_svd(W)
    assert torch.equal(fast.U, reference.U)  # fell back


def test_the_diagonal_test_sends_a_zero_row_to_lapack_without_an_eigensolver(monkeypatch) -> None:
    """Before its eigensolver, the Gram route looks at G's diagonal: min G_ii < max G_ii/κ² proves κ(G) > κ²
    (λ_min ≤ min G_ii, λ_max ≥ max G_ii). A W with a zero row (a dead unit) goes to LAPACK's SVD, bit for bit,
    without an eigendecomposition; an ill-conditioned W whose diagonal does not show it still falls back after it."""
    import numpy as np
    import scipy.linalg

    import intrudim.spectral.svd as svd

    limit = 1.0 / svd.GRAM_MAX_CONDITION**2
    assert svd._surely_too_ill_conditioned(np.array([1.0, 0.5, 0.3 * limit]))
    assert svd._surely_too_ill_conditioned(np.zeros(5))
    assert not svd._surely_too_ill_conditioned(np.array([1.0, 0.5, 3 * limit]))

    g = torch.Generator().manual_seed(6)
    W = torch.randn(300, 400, generator=g, dtype=torch.float64)
    W[17] = 0.0
    called = []
    real_eigh = scipy.linalg.eigh
    monkeypatch.setattr(scipy.linalg, "eigh", lambda *a, **k: called.append(1) or real_eigh(*a, **k))
    fast, reference = svd.base_svd(W), svd.thin_svd(W)
    assert called == [] and torch.equal(fast.U, reference.U) and torch.equal(fast.Vh, reference.Vh)

    hidden = _spectrum_matrix(300, 300, torch.logspace(0, -7, 300, dtype=torch.float64), seed=7)  # κ = 1e7
    assert not svd._surely_too_ill_conditioned(torch.diagonal(hidden @ hidden.T).numpy())
    fast, reference = svd.base_svd(hidden), svd.thin_svd(hidden)
    assert len(called) == 1 and torch.equal(fast.U, reference.U)  # the check after the eigensolver decided


def test_the_cache_uses_the_gram_route_only_for_float32_factors(tmp_path) -> None:
    """float32 cache (default): the Gram route; a float64 cache and no cache at all: LAPACK's exact SVD."""
    from intrudim.spectral.svd import thin_svd
    from intrudim.weights.svd_cache import BaseSVDCache

    W = torch.randn(300, 500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = thin_svd(W)
    for cache in (BaseSVDCache(tmp_path / "f64", dtype=torch.float64), BaseSVDCache(None)):
        assert torch.equal(cache.get(W).U.to(torch.float64), reference.U)
    fast = BaseSVDCache(tmp_path / "f32").get(W)
    assert fast.U.dtype == torch.float32
    assert float((fast.U.double() * reference.U).sum(0).abs().min()) > 1 - 1e-6
