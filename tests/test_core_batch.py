"""Stacked LoRA cores (a matrix-major scan's batch) against dense float64 SVDs and against lora_core one at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import intrudim.spectral.core_batch as core_batch
from intrudim.spectral.core_batch import _cholesky_residual, lora_cores
from intrudim.spectral.structured import GramCore, LoraCore, core_top_k, lora_core
from intrudim.spectral.svd import SVDFactors

K = 6


def planted_base(out: int, inp: int, seed: int, right_vectors: bool, dtype=torch.float32) -> tuple[torch.Tensor,
                                                                                                   SVDFactors]:  # fmt: skip
    """W₀ with a decaying spectrum and its thin SVD stored as the cache stores it (U, Vh in ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    p = min(out, inp)
    U = torch.linalg.qr(torch.randn(out, p, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(inp, p, generator=g, dtype=torch.float64))[0]
    S = 3.0 * 0.93 ** torch.arange(p, dtype=torch.float64)
    W0 = (U * S) @ V.T
    return W0, SVDFactors(U=U.to(dtype), S=S, Vh=V.T.to(dtype) if right_vectors else None)


def planted_factors(W0: torch.Tensor, base: SVDFactors, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Adapters of ranks 1…16 and several strengths, one at PEFT's init (B = 0) and one whose B lies almost inside
    span(U₀) (the Cholesky form refuses it)."""
    g = torch.Generator().manual_seed(seed)
    out, inp = W0.shape
    factors = []
    for i, (r, strength) in enumerate([(1, 2.0), (4, 0.3), (16, 1.0), (2, 5.0), (8, 0.05)]):
        B = strength * torch.randn(out, r, generator=g) / out**0.5
        A = torch.randn(r, inp, generator=g) / inp**0.5
        factors.append((B, A, 2.0 if i % 2 else 0.5))
    factors.append((torch.zeros(out, 4), torch.randn(4, inp, generator=g), 2.0))  # PEFT's init: ΔW = 0
    U = base.U.to(torch.float32)
    inside = U[:, :3] @ torch.randn(3, 3, generator=g) + 1e-4 * torch.randn(out, 3, generator=g)
    factors.append((inside, torch.randn(3, inp, generator=g) / inp**0.5, 1.0))
    return factors


def dense_top(W0: torch.Tensor, B, A, scale: float, base: SVDFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """σ₁…σ_K and max |cos| of each top tuned left vector against every base left vector: a float64 dense SVD."""
    Wt = W0 + scale * (B.to(torch.float64) @ A.to(torch.float64))
    U, S, _ = torch.linalg.svd(Wt, full_matrices=False)
    return S[:K], (U[:, :K].T @ base.U.to(torch.float64)).abs().amax(dim=1)


@pytest.mark.parametrize("shape,right_vectors", [
    ((40, 40), False),  # square, Gram route (what the cache stores for q/k/v/o)
    ((32, 56), False),  # wide, Gram route (down_proj)
    ((56, 32), True),  # tall: B's part outside span(U₀) (gate/up_proj)
    ((32, 56), True),  # wide with right vectors: Aᵀ's part outside span(V₀)
])  # fmt: skip
def test_stacked_cores_equal_dense_svds_and_the_one_at_a_time_cores(shape, right_vectors, monkeypatch):
    W0, base = planted_base(*shape, seed=1, right_vectors=right_vectors)
    factors = planted_factors(W0, base, seed=2)
    monkeypatch.setattr(core_batch, "STACK_COLUMNS", 12)  # several runs of stacked adapters, one wider than the limit
    cores = lora_cores(base, factors, W0=W0.to(torch.float32))
    assert len(cores) == len(factors)
    assert all(isinstance(c, GramCore if not right_vectors else LoraCore) for c in cores)
    for (B, A, scale), core in zip(factors, cores, strict=True):
        top = core_top_k(core, K)
        S_ref, cos_ref = dense_top(W0, B, A, scale, base)
        torch.testing.assert_close(top.S, S_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(top.max_abs_cosine(core.p), cos_ref, rtol=1e-4, atol=1e-5)
        one = core_top_k(lora_core(base, B, A, scale, W0=W0.to(torch.float32)), K)
        torch.testing.assert_close(top.S, one.S, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(top.max_abs_cosine(core.p), one.max_abs_cosine(core.p), rtol=1e-5, atol=1e-6)
        assert core.frobenius_sq() == pytest.approx(float(((W0 + scale * B.double() @ A.double()) ** 2).sum()),
                                                    rel=1e-5)  # fmt: skip


def test_the_cholesky_form_is_taken_only_for_a_well_conditioned_residual():
    W0, base = planted_base(56, 32, seed=3, right_vectors=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    outside = torch.randn(56, 4, generator=g, dtype=torch.float64)
    inside_of = lambda X: (X.T @ base.U).T  # noqa: E731
    T = _cholesky_residual(outside, inside_of(outside))
    assert T is not None
    residual = outside - base.U @ inside_of(outside)
    torch.testing.assert_close(T.T @ T, residual.T @ residual, rtol=1e-10, atol=1e-12)  # TᵀT = the residual's Gram
    assert torch.equal(T, torch.triu(T))
    nearly_inside = base.U[:, :4] @ torch.randn(4, 4, generator=g, dtype=torch.float64) + 1e-6 * outside
    assert _cholesky_residual(nearly_inside, inside_of(nearly_inside)) is None
    assert _cholesky_residual(torch.zeros(56, 2, dtype=torch.float64), torch.zeros(32, 2, dtype=torch.float64)) is None


def test_no_adapters_and_bad_factors():
    W0, base = planted_base(16, 16, seed=5, right_vectors=False)
    assert lora_cores(base, []) == []
    with pytest.raises(ValueError, match="pass W0"):
        lora_cores(base, [(torch.zeros(16, 1), torch.zeros(1, 16), 1.0)])
    with pytest.raises(ValueError, match=r"do not fit a base matrix of shape \(16, 16\)"):
        lora_cores(base, [(torch.zeros(16, 1), torch.zeros(1, 12), 1.0)], W0=W0.float())
    tall_W0, tall = planted_base(24, 16, seed=6, right_vectors=True)
    with pytest.raises(ValueError, match="do not fit"):
        lora_cores(tall, [(torch.zeros(20, 2), torch.zeros(2, 16), 1.0)])
    assert dataclasses.is_dataclass(lora_cores(tall, [(torch.ones(24, 1), torch.ones(1, 16), 1.0)])[0])
