"""The warm path without cached right vectors (GramCore) and the cold path that stops computing them.

For a wide or square base matrix the cache's Gram route stores U and σ only (``base_svd(right_vectors=False)``);
the structured top-k of W₀ + s·B·A then comes from the eigenpairs of N = U₀ᵀ W_t W_tᵀ U₀, built from W₀ and the
factors. Each number is checked against a dense float64 LAPACK SVD of W_t, and against the LoRA core that uses
the right vectors, on planted cases, square and wide shapes, every top-k method, repair's triplets and the k-sweep.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from intrudim.spectral.repair import lora_top_triplets
from intrudim.spectral.structured import (
    GramCore,
    LoraCore,
    core_full_spectrum,
    core_top_k,
    gram_core,
    lora_core,
    projected_full_spectrum,
)
from intrudim.spectral.svd import SVDFactors, base_svd, thin_svd

SHAPES = [(240, 240), (200, 360), (120, 500)]


def _problem(m: int, n: int, seed: int, r: int = 6, scale: float = 0.8):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    B = torch.randn(m, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / n**0.5
    return W0, B, A, scale


def _left_only(factors: SVDFactors) -> SVDFactors:
    return SVDFactors(U=factors.U, S=factors.S, Vh=None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["auto", "lanczos", "krylov", "dense"])
def test_gram_core_top_k_equals_the_dense_float64_svd(shape, method):
    m, n = shape
    W0, B, A, s = _problem(m, n, seed=m + n)
    Wt = W0 + s * B @ A
    U0 = thin_svd(W0).U
    reference = thin_svd(Wt)
    core = lora_core(_left_only(thin_svd(W0)), B, A, s, W0=W0)
    assert isinstance(core, GramCore) and core.shape == (m, m)
    torch.testing.assert_close(core.dense(), U0.T @ Wt @ Wt.T @ U0, rtol=0, atol=1e-12)
    assert core.frobenius_sq() == pytest.approx(float((Wt**2).sum()), rel=1e-12)
    top = core_top_k(core, 10, method=method)
    torch.testing.assert_close(top.S, reference.S[:10], rtol=1e-12, atol=0)
    cos = ((U0 @ top.Y) * reference.U[:, :10]).sum(0).abs()
    assert float(cos.min()) > 1 - 1e-10
    max_cos = (reference.U[:, :10].T @ U0).abs().amax(dim=1)
    torch.testing.assert_close(top.max_abs_cosine(m), max_cos, rtol=0, atol=1e-9)


def test_a_planted_intruder_is_found_by_the_gram_core():
    """A rank-1 update u vᵀ with u orthogonal to the base's top 20 vectors and σ above the base's σ₁: the top
    tuned vector is u itself (max |cos| to the base's u_i small), found without V₀."""
    g = torch.Generator().manual_seed(5)
    m, n = 200, 300
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    S = torch.linspace(2.0, 0.1, m, dtype=torch.float64)
    W0 = U @ torch.diag(S) @ V.T
    u = U[:, 20:].sum(1)
    u = u / u.norm()  # spread over 180 base vectors: |cos| ≤ 0.08 with each
    v = torch.randn(n, generator=g, dtype=torch.float64)
    v = v / v.norm()
    core = lora_core(SVDFactors(U=U, S=S, Vh=None), u[:, None], v[None, :], 5.0, W0=W0)
    top = core_top_k(core, 10)
    reference = thin_svd(W0 + 5.0 * torch.outer(u, v))
    expected = (reference.U[:, :10].T @ U).abs().amax(dim=1)
    assert float(expected[0]) < 0.2 and float(expected[1:].min()) > 0.5  # one intruder, on top
    torch.testing.assert_close(top.max_abs_cosine(m), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(top.S, reference.S[:10], rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_gram_cores_k_sweep_and_repair_triplets_equal_the_lora_cores(shape):
    m, n = shape
    W0, B, A, s = _problem(m, n, seed=3 * m + n)
    full = thin_svd(W0)
    with_v, without_v = lora_core(full, B, A, s), lora_core(_left_only(full), B, A, s, W0=W0)
    assert isinstance(with_v, LoraCore) and isinstance(without_v, GramCore)
    a, b = core_full_spectrum(with_v), projected_full_spectrum(full.U, W0, B, A, s)
    torch.testing.assert_close(b.S, a.S[:m], rtol=0, atol=1e-12)
    torch.testing.assert_close(b.max_abs_cosine(m), a.max_abs_cosine(m), rtol=0, atol=1e-9)
    old = lora_top_triplets(full, B, A, s, 12)
    new = lora_top_triplets(_left_only(full), B, A, s, 12, W0=W0)
    torch.testing.assert_close(new.S, old.S, rtol=1e-12, atol=0)
    signs = torch.sign((new.U * old.U).sum(0))
    torch.testing.assert_close(new.U * signs, old.U, rtol=0, atol=1e-9)
    torch.testing.assert_close(new.V * signs, old.V, rtol=0, atol=1e-9)
    Wt = W0 + s * B @ A
    torch.testing.assert_close(Wt.T @ new.U, new.V * new.S, rtol=0, atol=1e-10)  # W_tᵀu = σv


def test_a_base_svd_without_right_vectors_needs_w0_and_a_wide_or_square_matrix():
    W0, B, A, s = _problem(120, 200, seed=1)
    left = _left_only(thin_svd(W0))
    with pytest.raises(ValueError, match="pass W0"):
        lora_core(left, B, A, s)
    tall = _left_only(thin_svd(W0.T))  # U (200, 120) does not span ℝ²⁰⁰
    with pytest.raises(ValueError, match="wide or square"):
        gram_core(tall, W0.T, A.T, B.T, s)
    with pytest.raises(ValueError, match="do not fit"):
        gram_core(left, W0, B[:, :3], A, s)


@pytest.mark.parametrize("shape", [(300, 300), (300, 640), (640, 300)])
def test_base_svd_without_right_vectors(shape):
    """Wide and square: Vh is None and U is LAPACK's (up to sign); tall: the right vectors come free (E) and are
    returned as before. An ill-conditioned matrix still re-solves its small singular values (κ = 2e5)."""
    m, n = shape
    p = min(m, n)
    g = torch.Generator().manual_seed(m + n)
    U, _ = torch.linalg.qr(torch.randn(m, p, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=torch.float64))
    W = U @ torch.diag(torch.logspace(0, -5.3, p, dtype=torch.float64)) @ V.T
    fast, reference = base_svd(W, right_vectors=False), thin_svd(W)
    assert not torch.equal(fast.U, reference.U)  # the Gram route, not the fallback
    torch.testing.assert_close(fast.S, reference.S, rtol=0, atol=1e-13)
    assert float((fast.U * reference.U).sum(0).abs().min()) > 1 - 1e-9
    if m <= n:
        assert fast.Vh is None
        implicit = (fast.U.T @ W) / fast.S[:, None]  # Σ⁻¹UᵀW, the right vectors the probes checked
        assert float((implicit * reference.Vh).sum(1).abs().min()) > 1 - 1e-9
    else:
        assert fast.Vh is not None and float((fast.Vh * reference.Vh).sum(1).abs().min()) > 1 - 1e-9


def test_the_probes_still_send_bad_left_only_factors_to_lapack(monkeypatch):
    """With the second solve disabled, the implicit right vectors of the small singular values are not
    orthonormal: the probe check fails and LAPACK's factors (with Vh) come back, as for the full call."""
    import intrudim.spectral.svd as svd

    g = torch.Generator().manual_seed(1000)
    U, _ = torch.linalg.qr(torch.randn(500, 500, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(500, 500, generator=g, dtype=torch.float64))
    W = U @ torch.diag(torch.logspace(0, -5.3, 500, dtype=torch.float64)) @ V.T
    monkeypatch.setattr(svd, "GRAM_SPLIT", 0.0)
    fast, reference = svd.base_svd(W, right_vectors=False), svd.thin_svd(W)
    assert torch.equal(fast.U, reference.U) and fast.Vh is not None


def test_the_cache_stores_no_right_vectors_for_wide_and_square_matrices(tmp_path):
    from intrudim.weights.svd_cache import BaseSVDCache

    g = torch.Generator().manual_seed(4)
    cache = BaseSVDCache(tmp_path)
    for shape, has_vh in (((300, 300), False), ((300, 500), False), ((500, 300), True)):
        W = torch.randn(shape, generator=g, dtype=torch.float32)
        computed = cache.get(W)
        assert (computed.Vh is not None) == has_vh
        with safe_open(str(cache.path_for(cache.lookup(W).key)), "pt") as stored:
            assert ("Vh" in stored.keys()) == has_vh and "U" in stored.keys()
        loaded = cache.get(W)
        assert cache.hits >= 1 and (loaded.Vh is not None) == has_vh
        torch.testing.assert_close(loaded.U, computed.U)


def _adapter_pair(tmp_path, hidden: int = 192):
    """A LLaMA base above DENSE_SVD_MAX_DIM (so the cache takes the Gram route) and a peft adapter on all seven
    projections, strong enough for intruders."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=320, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32))  # fmt: skip
    model.save_pretrained(str(tmp_path / "base"))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if "lora_B" in name else 1.0))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    return tmp_path / "base", tmp_path / "adapter"


def test_analyze_and_repair_from_a_cache_without_right_vectors_equal_the_float64_cache(tmp_path):
    """End to end on a real peft adapter: `analyze` (with the k-sweep) and `repair`'s triplets from the default
    float32 cache (GramCore for q, k, v, o and down; the LoRA core with cached Vh for the tall gate and up) agree
    with the float64 cache (LAPACK's SVD with right vectors everywhere) in every count, σ and |cos|."""
    from intrudim.analyze import AnalyzeConfig, analyze
    from intrudim.repair import repair

    base, adapter = _adapter_pair(tmp_path)
    config = AnalyzeConfig(k=10, epsilon=0.5, k_sweep=True)
    fast = analyze(base, adapter, config, cache_dir=tmp_path / "f32")
    exact = analyze(base, adapter, config, cache_dir=tmp_path / "f64", cache_dtype="float64")
    assert fast.cache_misses == exact.cache_misses == 7
    assert fast.total_intruders == exact.total_intruders > 0
    stored = [str(p) for p in (tmp_path / "f32").rglob("*.safetensors")]
    with_vh = 0
    for path in stored:
        with safe_open(path, "pt") as entry:
            with_vh += "Vh" in entry.keys()
    assert len(stored) == 7 and with_vh == 2  # gate_proj and up_proj (tall) keep their free right vectors
    for a, b in zip(fast.matrices, exact.matrices, strict=True):
        assert a.name == b.name and a.intruder_ranks == b.intruder_ranks and a.k_sweep == b.k_sweep
        torch.testing.assert_close(torch.tensor(a.max_abs_cos), torch.tensor(b.max_abs_cos), rtol=0, atol=2e-5)
        torch.testing.assert_close(torch.tensor(a.singular_values), torch.tensor(b.singular_values), rtol=1e-6, atol=0)
        assert a.intruder_energy_share == pytest.approx(b.intruder_energy_share, rel=1e-5)
    fixed_fast = repair(base, adapter, out=tmp_path / "r32", cache_dir=tmp_path / "f32", lam=0.3)
    fixed_exact = repair(base, adapter, out=tmp_path / "r64", cache_dir=tmp_path / "f64", lam=0.3,
                         cache_dtype="float64")  # fmt: skip
    assert fixed_fast.total_intruders == fixed_exact.total_intruders == exact.total_intruders
    check = AnalyzeConfig(k=10, epsilon=0.5, cache_dtype="float64")
    again = analyze(base, tmp_path / "r32" / "adapter", check, cache_dir=tmp_path / "f64")
    reference = analyze(base, tmp_path / "r64" / "adapter", check, cache_dir=tmp_path / "f64")
    for a, b in zip(again.matrices, reference.matrices, strict=True):
        torch.testing.assert_close(torch.tensor(a.singular_values), torch.tensor(b.singular_values), rtol=1e-5, atol=0)
