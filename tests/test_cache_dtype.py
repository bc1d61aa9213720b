"""Half-precision base SVD cache (issue 28, part 2): ``cache_dtype="float16"``/``"bfloat16"`` store the factors at
half the bytes of float32 and give exactly --no-cache's counts, ranks and sweeps: what the rounding could change is
re-decided with a float64 SVD. The bounds are checked against the errors they bound, planted near-threshold vectors
are re-decided (and would be miscounted without), and bad values get one clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import dense_reference, write_peft_adapter
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import intrudim.analysis.rounded as rounded
from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.cli import app
from intrudim.errors import CacheDtypeError, InvalidConfigError
from intrudim.spectral.rounded_core import rounded_lora_spectrum
from intrudim.spectral.rounding import (
    FactorRounding,
    a_priori_bound,
    certify_factors,
    certify_rounding,
    cosine_error_bound,
    unit_roundoff,
)
from intrudim.spectral.structured import core_top_k, lora_core
from intrudim.spectral.svd import SVDFactors, thin_svd

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
EPSILON = 0.5
LORA_SCALE = 2.0  # write_peft_adapter: lora_alpha = 2r


def decisions(result) -> list:
    """What must equal --no-cache exactly: per matrix, the intruder ranks, the ε-sweep and the k-sweep."""
    return [(m.name, m.intruder_ranks, m.epsilon_sweep, m.k_sweep) for m in result.matrices]


def by_name(result, fragment: str):
    return next(m for m in result.matrices if fragment in m.name)


# ----------------------------------------------------------------------------------------------------------------
# The bounds, against the errors they bound


def _orthonormal(m: int, p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, p, generator=g, dtype=torch.float64))[0]


def _planted_bases(seed: int) -> dict[str, torch.Tensor]:
    """Left factors of real SVDs: random (square and tall), repeated singular values, and a near-identity basis
    whose tiny entries fall below float16's normal range (its subnormal term)."""
    g = torch.Generator().manual_seed(seed)
    bases = {"random square": _orthonormal(160, 160, seed), "random tall": _orthonormal(300, 96, seed + 1)}
    U, V = _orthonormal(120, 120, seed + 2), _orthonormal(120, 120, seed + 3)
    S = torch.tensor([3.0] * 40 + [1.0] * 40 + [0.1] * 40, dtype=torch.float64)
    bases["repeated sigma"] = thin_svd((U * S) @ V.T).U
    A = 1e-6 * torch.randn(128, 128, generator=g, dtype=torch.float64)
    bases["near identity"] = torch.linalg.matrix_exp(A - A.T)  # orthogonal, off-diagonal entries ~1e-6
    return bases


@pytest.mark.parametrize("dtype", list(HALF))
def test_the_cosine_bound_holds_on_random_and_planted_bases(dtype):
    """max |cos| with U₀ stored in half precision, upcast, accumulated in float32 or float64, never moves by more
    than :func:`cosine_error_bound` (certified and a priori) from the float64 value, also for the x that make the
    error largest: u_i plus D's largest column (|cos| largest in entry i, off by ~κ/√2 there) and D's top singular
    direction (attains ρ)."""
    half = HALF[dtype]
    for name, U in _planted_bases(seed=7).items():
        m, p = U.shape
        stored = U.to(half)
        D = stored.to(torch.float64) - U
        bound = certify_rounding(U, stored)
        prior = a_priori_bound(half, m, p)
        true_rho = float(torch.linalg.matrix_norm(D, 2))
        assert float(D.norm(dim=0).max()) <= bound.column <= prior.column, name
        assert true_rho <= bound.spectral <= prior.spectral, name
        assert bound.spectral <= 1.5 * true_rho + 1e-30, name  # certified, and tight
        g = torch.Generator().manual_seed(1)
        X = torch.randn(m, 200, generator=g, dtype=torch.float64)
        worst = int(D.norm(dim=0).argmax())
        aligned = U[:, worst] + D[:, worst] / D[:, worst].norm()
        top = torch.linalg.svd(D, full_matrices=False).U[:, 0]  # (m,): ‖Dᵀx‖ = ‖D‖₂
        X = torch.cat([X, U[:, :5], aligned[:, None], top[:, None]], dim=1)
        X = X / X.norm(dim=0)
        exact = (U.T @ X).abs().amax(dim=0)
        for accumulate in (torch.float32, torch.float64):
            computed = (stored.to(accumulate).T @ X.to(accumulate)).abs().amax(dim=0).to(torch.float64)
            observed = float((computed - exact).abs().max())
            assert observed <= cosine_error_bound(bound, m, accumulate) <= cosine_error_bound(prior, m, accumulate)
            if accumulate == torch.float64:
                assert observed > 0.2 * bound.column, name  # the planted x come close to the bound
        assert float((D.T @ top).norm()) <= bound.spectral


def _lora_problem(m: int, n: int, r: int, seed: int, strength: float):
    g = torch.Generator().manual_seed(seed)
    p = min(m, n)
    sigma = 0.85 ** torch.arange(p, dtype=torch.float64) * (1 + 0.05 * torch.rand(p, generator=g, dtype=torch.float64))
    W0 = ((_orthonormal(m, p, seed) * sigma.sort(descending=True).values) @ _orthonormal(n, p, seed + 1).T).float()
    B = torch.randn(m, r, generator=g)
    A = torch.randn(r, n, generator=g)
    B = B * (strength / float(torch.linalg.matrix_norm(B.double() @ A.double(), 2)))
    return W0, B, A


def _rounded_factors(W0: torch.Tensor, dtype: str) -> tuple[SVDFactors, SVDFactors]:
    """The float64 SVD --no-cache takes, and the factors a half cache stores of it (Vh only for a tall matrix)."""
    exact = thin_svd(W0)
    half = HALF[dtype]
    tall = W0.shape[0] > W0.shape[1]
    U, Vh = exact.U.to(half), exact.Vh.to(half) if tall else None
    rounding = certify_factors(dtype, exact.U, U, exact.Vh if tall else None, Vh)
    return exact, SVDFactors(U=U, S=exact.S, Vh=Vh, rounding=rounding)


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("shape", [(96, 96), (64, 150), (150, 64), (200, 200)], ids=["square", "wide", "tall", "big"])
def test_the_structured_band_holds_against_the_float64_path(dtype, shape):
    """Every tuned vector's max |cos| from the half factors is within its band of the float64 path's, and the band
    is useful: most vectors certified (not the worst case's √p·u), σ to the same precision."""
    certified = 0
    for seed, strength in ((0, 0.3), (1, 1.0), (2, 3.0)):
        W0, B, A = _lora_problem(*shape, r=4, seed=seed, strength=strength)
        exact, stored = _rounded_factors(W0, dtype)
        top = core_top_k(lora_core(exact, B, A, LORA_SCALE), 10)
        spectrum = rounded_lora_spectrum(stored, W0, B, A, LORA_SCALE, 10)
        error = (spectrum.max_abs_cosine() - top.max_abs_cosine(exact.rank_dim)).abs()
        assert bool((error <= spectrum.band).all()), (error, spectrum.band)
        certified += int((spectrum.band < 20 * unit_roundoff(HALF[dtype])).sum())
        torch.testing.assert_close(spectrum.S, top.S, rtol=1e-6, atol=0)  # Ritz values of W₀ itself: error ~ sin²
    assert certified >= 20


# ----------------------------------------------------------------------------------------------------------------
# End to end: counts equal --no-cache's


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_half_cache_counts_equal_no_cache(tiny_models, tmp_path, arch, dtype):
    """A random adapter on every architecture (GPT-2's Conv1D transposed): the run that fills the cache, and the
    warm run from the half factors, give --no-cache's ranks and sweeps; the JSON counts the matrices re-decided."""
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "a", r=3, strength=2.0)
    plain = analyze(tiny_models[arch], adapter, use_cache=False)
    cold = analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype)
    warm = analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype)
    assert cold.cache_misses == len(cold.matrices) and warm.cache_hits == len(warm.matrices)
    assert decisions(cold) == decisions(warm) == decisions(plain)
    assert cold.matrices_redecided == 0  # the filling run decides with the float64 factors it computed
    assert warm.matrices_redecided < len(warm.matrices)  # most matrices are decided from the half factors
    document = warm.to_json()
    assert document["matrices_redecided"] == warm.matrices_redecided
    assert sum(m["redecided"] for m in document["matrices"]) == warm.matrices_redecided
    for a, b in zip(plain.matrices, warm.matrices, strict=True):
        torch.testing.assert_close(torch.tensor(a.max_abs_cos), torch.tensor(b.max_abs_cos), rtol=0,
                                   atol=4 * unit_roundoff(HALF[dtype]))  # fmt: skip
        torch.testing.assert_close(torch.tensor(a.singular_values), torch.tensor(b.singular_values), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", list(HALF))
def test_dense_tuned_model_with_half_cache_equals_no_cache(tiny_models, tmp_path, dtype):
    """A fully fine-tuned model (its top vectors do not depend on the base factors: the band is β alone), with
    the k-sweep, which needs every tuned vector."""
    state = load_file(str(tiny_models["llama"] / "model.safetensors"))
    g = torch.Generator().manual_seed(5)
    for key, value in state.items():
        if value.ndim == 2 and "layers." in key:
            state[key] = value + 3.0 * value.std() * torch.randn(value.shape, generator=g)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    save_file(state, str(tuned / "model.safetensors"))
    (tuned / "config.json").write_text((tiny_models["llama"] / "config.json").read_text())
    plain = analyze(tiny_models["llama"], tuned, use_cache=False, k_sweep=True)
    analyze(tiny_models["llama"], tuned, cache_dir=tmp_path / "c", cache_dtype=dtype)
    warm = analyze(tiny_models["llama"], tuned, cache_dir=tmp_path / "c", cache_dtype=dtype, k_sweep=True)
    assert warm.cache_hits == len(warm.matrices) and plain.total_intruders > 0
    assert decisions(warm) == decisions(plain)
    assert warm.matrices_redecided < len(warm.matrices)


def test_scan_passes_the_half_cache_through(tiny_models, tmp_path):
    """`scan` (units: base SVDs, then matrices) with a float16 cache: each input's analysis.json equals --no-cache's
    analysis in every rank, and says how many matrices were re-decided."""
    from intrudim.scan import ScanConfig, scan

    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=3, strength=2.0)
    config = ScanConfig(analysis=AnalyzeConfig(cache_dtype="float16"))
    for out in ("fill", "warm"):
        result = scan(tiny_models["llama"], [adapter], tmp_path / out, config, cache_dir=tmp_path / "c")
    plain = analyze(tiny_models["llama"], adapter, use_cache=False)
    written = json.loads((tmp_path / "warm" / "runs" / result.rows[0]["name"] / "analysis.json").read_text())
    assert written["config"]["cache_dtype"] == "float16" and written["cache"]["misses"] == 0
    assert [m["intruder_ranks"] for m in written["matrices"]] == [m.intruder_ranks for m in plain.matrices]
    assert written["matrices_redecided"] == sum(m["redecided"] for m in written["matrices"])


# ----------------------------------------------------------------------------------------------------------------
# Planted near-threshold vectors


def plant_top_vector(W0: torch.Tensor, target: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 LoRA factors (B (out, 1), A (1, in), float32, scale 2) whose sum with W₀ has a top left singular vector
    with max |cos| to W₀'s basis equal to ``target`` (to ~1e-9, by bisection on the float64 dense reference):
    B ∝ cos θ·u₁ + sin θ·w (w a mix of the other base vectors), A = v₁ᵀ, ‖sBA‖ = 3σ₁."""
    U, S, Vh = torch.linalg.svd(W0.to(torch.float64), full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    w = U[:, 1:] @ torch.randn(U.shape[1] - 1, generator=g, dtype=torch.float64)
    w = w / w.norm()

    def factors(theta: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        b = math.cos(theta) * U[:, 0] + math.sin(theta) * w
        B = (1.5 * float(S[0]) * b).float()[:, None]
        A = Vh[0].float()[None, :]
        Wt = W0.to(torch.float64) + LORA_SCALE * B.double() @ A.double()
        return float(dense_reference(W0, Wt, 1, EPSILON)["max_cos"][0]), B, A

    low, high = 0.0, math.pi / 2  # max |cos| falls from 1 to ~0.37 along the way
    for _ in range(60):
        middle = (low + high) / 2
        if factors(middle)[0] > target:
            low = middle
        else:
            high = middle
    _, B, A = factors((low + high) / 2)
    return B, A


def planted_adapter(base_dir: Path, arch: str, out: Path, targets: dict[str, float]) -> Path:
    """A real peft adapter (rank 1, random factors on every module) with the modules named in ``targets``
    replaced by planted factors (:func:`plant_top_vector`)."""
    write_peft_adapter(base_dir, arch, out, r=1, seed=3, strength=0.5)
    base = load_file(str(base_dir / "model.safetensors"))
    weights = load_file(str(out / "adapter_model.safetensors"))
    for module, target in targets.items():
        B, A = plant_top_vector(base[f"{module}.weight"], target)
        weights[f"base_model.model.{module}.lora_B.weight"] = B.contiguous()
        weights[f"base_model.model.{module}.lora_A.weight"] = A.contiguous()
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out


PLANTS = {  # (arch, module above ε, module below ε): square, wide and tall base matrices
    "bert": ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.output.dense"),
    "llama": ("layers.0.mlp.down_proj", "layers.1.mlp.up_proj"),
}


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("arch", list(PLANTS))
def test_planted_near_threshold_vectors_are_redecided(tiny_models, tmp_path, arch, dtype):
    """A top vector planted just above ε and one just below, closer to it than the half precision's rounding
    (u/8), are re-decided and counted as --no-cache counts them; one planted 0.05 away is decided from the half
    factors (the re-decision is where it has to be, not everywhere)."""
    above, below = PLANTS[arch]
    offset = unit_roundoff(HALF[dtype]) / 8
    near = planted_adapter(tiny_models[arch], arch, tmp_path / "near", {above: EPSILON + offset,
                                                                         below: EPSILON - offset})  # fmt: skip
    far = planted_adapter(tiny_models[arch], arch, tmp_path / "far", {above: EPSILON + 0.05, below: EPSILON - 0.05})
    # Only ε decides, and k = 5: what is re-decided is the plants' doing (on these tiny σ_i = 0.8^i spectra bfloat16's
    # rounding, 2ρσ₁² ≈ 0.007, is not small against the gaps between λ_10, λ_11 and λ_12 ≈ 0.019, 0.012, 0.007).
    options = {"epsilons": (EPSILON,), "k": 5}
    for adapter, redecided in ((near, True), (far, False)):
        plain = analyze(tiny_models[arch], adapter, use_cache=False, **options)
        analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype, **options)
        warm = analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype, **options)
        assert warm.cache_misses == 0 and decisions(warm) == decisions(plain)
        assert 1 not in by_name(plain, above).intruder_ranks and 1 in by_name(plain, below).intruder_ranks
        assert by_name(warm, above).redecided is redecided and by_name(warm, below).redecided is redecided


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("arch", list(PLANTS))
def test_without_redecision_a_planted_vector_would_be_miscounted(tiny_models, tmp_path, arch, dtype, monkeypatch):
    """The test that can fail: a vector planted so that the half factors' max |cos| and the float64 one lie on
    either side of ε. Trusting the half factors (re-decision switched off) miscounts it; the real run re-decides
    it and counts as --no-cache."""
    module = PLANTS[arch][0]
    cache = tmp_path / "c"

    def run(target: float) -> tuple[float, float, object, object]:
        adapter = planted_adapter(tiny_models[arch], arch, tmp_path / f"a{target}", {module: target})
        plain = analyze(tiny_models[arch], adapter, use_cache=False)
        analyze(tiny_models[arch], adapter, cache_dir=cache, cache_dtype=dtype)  # fill (float64 factors)
        with monkeypatch.context() as patch:
            patch.setattr(rounded, "decisions_certain", lambda *args: True)
            trusting = analyze(tiny_models[arch], adapter, cache_dir=cache, cache_dtype=dtype)
        return by_name(plain, module).max_abs_cos[0], by_name(trusting, module).max_abs_cos[0], plain, trusting

    exact, half, _, _ = run(EPSILON)
    error = half - exact  # the half factors' error for this plant (it barely moves with the plant)
    exact, half, plain, trusting = run(EPSILON - error / 2)
    assert (exact - EPSILON) * (half - EPSILON) < 0, (exact, half)
    assert by_name(trusting, module).intruder_ranks != by_name(plain, module).intruder_ranks
    assert trusting.total_intruders != plain.total_intruders
    checked = analyze(tiny_models[arch], tmp_path / f"a{EPSILON - error / 2}", cache_dir=cache, cache_dtype=dtype)
    assert decisions(checked) == decisions(plain) and by_name(checked, module).redecided


def plant_tie(W0: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 LoRA factors (scale 2) adding a new direction, made of W₀'s tail (an intruder), whose singular value is
    W₀'s ``rank``-th one times 1 + 10⁻⁵: a near tie (an exact one would mix the two vectors), far inside the half
    precisions' error, far outside float64's and the factors' float32 rounding."""
    U, S, Vh = torch.linalg.svd(W0.to(torch.float64), full_matrices=False)
    g = torch.Generator().manual_seed(4)
    tail = 2 * rank
    w = U[:, tail:] @ torch.rand(U.shape[1] - tail, generator=g, dtype=torch.float64)
    z = Vh[tail:].T @ torch.rand(Vh.shape[0] - tail, generator=g, dtype=torch.float64)
    w, z = w / w.norm(), z / z.norm()
    W_tail = (U[:, tail:] * S[tail:]) @ Vh[tail:]

    def new_sigma(tau: float) -> float:
        return float(torch.linalg.svdvals(W_tail + tau * torch.outer(w, z))[0])

    low, high = 0.0, 2 * float(S[0])
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if new_sigma(middle) < float(S[rank - 1]) * (1 + 1e-5) else (low, middle)
    return (low / LORA_SCALE * w).float()[:, None], z.float()[None, :]


TIES = {"bert": "encoder.layer.0.attention.self.query", "llama": "layers.1.mlp.up_proj"}  # square, tall


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("arch", list(TIES))
def test_a_tie_at_the_top_k_boundary_is_redecided(tiny_models, tmp_path, arch, dtype):
    """An intruder whose σ is the base's 10th times 1 + 10⁻⁵ (so it, not the base vector, is the 10th, by a margin
    the half factors cannot see: their intervals for σ₁₀² and σ₁₁² overlap): the matrix is re-decided and counted as
    --no-cache counts it."""
    module = TIES[arch]
    base = load_file(str(tiny_models[arch] / "model.safetensors"))
    B, A = plant_tie(base[f"{module}.weight"], rank=10)
    adapter = planted_adapter(tiny_models[arch], arch, tmp_path / "a", {})
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    weights[f"base_model.model.{module}.lora_B.weight"], weights[f"base_model.model.{module}.lora_A.weight"] = B, A
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    plain = analyze(tiny_models[arch], adapter, use_cache=False, k=11)
    tied = by_name(plain, module)
    assert tied.singular_values[10] / tied.singular_values[9] > 1 - 2e-5  # the near tie
    assert tied.max_abs_cos[9] < EPSILON < tied.max_abs_cos[10]  # the intruder 10th, the base vector 11th
    plain = analyze(tiny_models[arch], adapter, use_cache=False)
    analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype)
    warm = analyze(tiny_models[arch], adapter, cache_dir=tmp_path / "c", cache_dtype=dtype)
    assert decisions(warm) == decisions(plain) and by_name(warm, module).redecided


# ----------------------------------------------------------------------------------------------------------------
# Bytes, and bad values


def test_half_cache_entries_are_half_the_bytes_of_float32(tmp_path):
    """U (and a tall matrix's Vh) at 2 bytes an entry: each entry file about half its float32 twin (σ stays float64,
    the certificate is a few dozen bytes of metadata). A LLaMA layer of width 192, so that the float32 cache takes
    its usual layout (no Vh for wide and square matrices), as at 7B scale."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=192, intermediate_size=320, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32))  # fmt: skip
    model.save_pretrained(str(tmp_path / "base"))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    sizes = {}
    for dtype in ("float32", "float16", "bfloat16"):
        analyze(tmp_path / "base", tmp_path / "adapter", cache_dir=tmp_path / dtype, cache_dtype=dtype)
        entries = list((tmp_path / dtype).rglob("*.safetensors"))
        sizes[dtype] = {p.name: p.stat().st_size for p in entries}
        for path in entries:
            with safe_open(str(path), "pt") as entry:
                assert entry.get_tensor("U").dtype == getattr(torch, dtype)
                assert entry.get_tensor("S").dtype == torch.float64
                if dtype != "float32":
                    rounding = FactorRounding.from_metadata(entry.metadata()["rounding"], dtype, (1, 1), None)
                    assert rounding.U.column <= unit_roundoff(HALF[dtype])
    assert len(sizes["float32"]) == 7 and sizes["float16"].keys() == sizes["float32"].keys()
    for dtype in ("float16", "bfloat16"):
        for name, size in sizes["float32"].items():
            assert 0.5 <= sizes[dtype][name] / size <= 0.52, (dtype, name)


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), (fragment, result.output)


def test_bad_cache_dtypes_give_one_clear_error(tiny_models, tmp_path):
    """--cache-dtype float8, and a cache directory written at another precision where a half one is involved, each
    give one paragraph naming what to do; float32 and float64 entries still mix as before; repair refuses half."""
    base = tiny_models["llama"]
    adapter = write_peft_adapter(base, "llama", tmp_path / "a", r=2)
    runner = CliRunner()
    with pytest.raises(InvalidConfigError, match="cache_dtype must be one of 'float32', 'float64', 'float16', 'bfloat16'"):
        AnalyzeConfig(cache_dtype="float8")
    assert_clean_error(runner.invoke(app, ["analyze", str(base), str(adapter), "--cache-dtype", "float8"]),
                       "cache_dtype must be one of", "got 'float8'")  # fmt: skip

    analyze(base, adapter, cache_dir=tmp_path / "f32")
    with pytest.raises(CacheDtypeError, match="holds float32 factors, but this run asked for --cache-dtype float16"):
        analyze(base, adapter, cache_dir=tmp_path / "f32", cache_dtype="float16")
    result = runner.invoke(app, ["analyze", str(base), str(adapter), "--cache", str(tmp_path / "f32"),
                                 "--cache-dtype", "bfloat16"])  # fmt: skip
    assert_clean_error(result, "holds float32 factors", "--cache-dtype float32 on this directory", "--cache DIR")
    assert len(result.output.strip().splitlines()) <= 8  # one paragraph (wrapped), no traceback

    analyze(base, adapter, cache_dir=tmp_path / "f16", cache_dtype="float16")
    for other in ("float32", "float64", "bfloat16"):
        with pytest.raises(CacheDtypeError, match=f"holds float16 factors, but this run asked for --cache-dtype {other}"):
            analyze(base, adapter, cache_dir=tmp_path / "f16", cache_dtype=other)
    mixed = analyze(base, adapter, cache_dir=tmp_path / "f32", cache_dtype="float64")  # as before: no error
    assert mixed.cache_hits == len(mixed.matrices)

    from intrudim.repair import RepairConfig

    with pytest.raises(InvalidConfigError, match="repair needs float32 or float64 base factors"):
        RepairConfig(cache_dtype="float16")


def test_cli_help_names_the_half_precisions():
    output = " ".join(CliRunner().invoke(app, ["analyze", "--help"], terminal_width=200).output.split())
    assert "float32|float64|float16|bfloat16" in output and "re-decided" in output


def test_json_of_a_half_cache_run_says_how_many_matrices_were_redecided(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2, strength=2.0)
    runner = CliRunner()
    for _ in range(2):  # fill, then warm
        result = runner.invoke(app, ["analyze", str(tiny_models["bert"]), str(adapter), "--cache", str(tmp_path / "c"),
                                     "--cache-dtype", "float16", "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config"]["cache_dtype"] == "float16" and document["cache"]["misses"] == 0
    assert document["matrices_redecided"] == sum(m["redecided"] for m in document["matrices"])
