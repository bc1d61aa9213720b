"""Parity above DENSE_SVD_MAX_DIM: 256–384-wide BERT and LLaMA, so that `analyze` takes its Lanczos/ARPACK path
(structured LoRA core and dense top-k) while the reference below takes LAPACK's full SVD in float64.

Every number the README promises per matrix (intruder ranks, max |cos|, σ, energy share, largest intruder rank and
σ ratio, ε- and k-sweeps) and per model (totals, by_layer, by_module_type, epsilon_sweep()) is compared with a
reference written here from peft's own merge and `torch.linalg.svd`, with the default float32 base SVD cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import base_state, decay_spectrum_, merged_state
from safetensors.torch import save_file

import intrudim.spectral.structured as structured
import intrudim.spectral.svd as svd
from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.spectral.svd import DENSE_SVD_MAX_DIM

pytestmark = pytest.mark.parity

K, EPSILON = 10, 0.5
K_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _wide_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=384, max_position_embeddings=32))  # fmt: skip
    decay_spectrum_(model, seed=11, decay=0.98)  # slow decay: every base vector is well determined
    return model


def _wide_llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=384, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32))  # fmt: skip
    decay_spectrum_(model, seed=12, decay=0.98)
    return model


TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@pytest.fixture(scope="module")
def wide_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wide")
    paths = {}
    for name, build in (("bert", _wide_bert), ("llama", _wide_llama)):
        build().save_pretrained(str(root / name))
        paths[name] = root / name
    return paths


def _write_adapter(base_dir: Path, arch: str, out: Path, *, seed: int, **lora_kwargs) -> Path:
    """A real PEFT adapter: random factors; half the modules get an update stronger than σ₁ (intruders)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir))
    lora_kwargs.setdefault("r", 4)
    lora_kwargs.setdefault("lora_alpha", 8)
    config = LoraConfig(target_modules=TARGETS[arch], init_lora_weights=False, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
        for i, module in enumerate(m for m in peft_model.modules() if "default" in getattr(m, "lora_B", {})):
            delta = module.get_delta_weight("default").to(torch.float64)
            target = (1.6 if i % 2 == 0 else 0.05) * (1 + 0.3 * float(torch.rand(1, generator=generator)))
            module.lora_B["default"].weight.mul_(target / float(torch.linalg.matrix_norm(delta, 2)))
    peft_model.save_pretrained(str(out))
    return out


def _write_dense_tuned(base_dir: Path, out: Path, seed: int) -> Path:
    """A 'fully fine-tuned' model: small dense noise everywhere, plus a strong new direction in every other matrix."""
    generator = torch.Generator().manual_seed(seed)
    state = base_state(base_dir)
    i = 0
    for key, W in state.items():
        if W.ndim == 2 and ("layers." in key or "layer." in key):
            W64 = W.to(torch.float64)
            noise = torch.randn(W.shape, generator=generator, dtype=torch.float64) * 1e-3
            if i % 2 == 0:
                u = torch.randn(W.shape[0], generator=generator, dtype=torch.float64)
                v = torch.randn(W.shape[1], generator=generator, dtype=torch.float64)
                sigma1 = float(torch.linalg.matrix_norm(W64, 2))
                noise += 1.5 * sigma1 * torch.outer(u / u.norm(), v / v.norm())
            state[key] = (W64 + noise).to(W.dtype)
            i += 1
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    return out


def _reference(W0: torch.Tensor, Wt: torch.Tensor) -> dict:
    """Dense float64 LAPACK reference of every per-matrix number."""
    U0, S0, _ = torch.linalg.svd(W0.to(torch.float64), full_matrices=False)
    Ut, St, _ = torch.linalg.svd(Wt.to(torch.float64), full_matrices=False)
    max_cos_all = (Ut.T @ U0).abs().max(dim=1).values
    max_cos = max_cos_all[:K]
    ranks = [j + 1 for j in range(K) if max_cos[j] < EPSILON]
    p = S0.shape[0]
    k_sweep = {f"k={K}": int((max_cos_all[:K] < EPSILON).sum())}
    for f in K_FRACTIONS:
        kk = max(1, round(f * p))
        k_sweep[f"{round(f * 100)}%"] = int((max_cos_all[:kk] < EPSILON).sum())
    frob = float((Wt.to(torch.float64) ** 2).sum())
    return {
        "max_cos": max_cos, "ranks": ranks, "sigma": St[:K], "S0": S0,
        "energy": sum(float(St[r - 1] ** 2) for r in ranks) / frob,
        "largest_rank": ranks[0] if ranks else None,
        "sigma_ratio": float(St[ranks[0] - 1] / S0[0]) if ranks else None,
        "eps_sweep": {eps: int((max_cos < eps).sum()) for eps in EPSILONS},
        "k_sweep": k_sweep,
    }  # fmt: skip


def _count_lanczos(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = svd._arpack_top_k

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(svd, "_arpack_top_k", spy)
    monkeypatch.setattr(structured, "_arpack_top_k", spy)
    real_symmetric = structured._arpack_symmetric_top_k  # a GramCore's Lanczos (wide/square, no cached Vh)

    def symmetric_spy(*args, **kwargs):
        calls.append(1)
        return real_symmetric(*args, **kwargs)

    monkeypatch.setattr(structured, "_arpack_symmetric_top_k", symmetric_spy)
    return calls


def _margin_ok(values: torch.Tensor, threshold: float, margin: float = 1e-4) -> bool:
    return bool(((values - threshold).abs() > margin).all())


def _assert_matches(result, base_dir: Path, tuned_state: dict[str, torch.Tensor], *, k_sweep: bool) -> None:
    base = base_state(base_dir)
    assert result.matrices, "nothing analysed"
    expected_layers: dict[str, int] = {}
    expected_types: dict[str, int] = {}
    expected_eps = dict.fromkeys(EPSILONS, 0)
    for m in result.matrices:
        ref = _reference(base[m.name], tuned_state[m.name])
        assert min(m.shape) > DENSE_SVD_MAX_DIM or max(m.shape) > DENSE_SVD_MAX_DIM
        # float32 cache: |cos| to ~1e-6; counts exact wherever no value sits within 1e-4 of ε
        torch.testing.assert_close(torch.tensor(m.max_abs_cos, dtype=torch.float64), ref["max_cos"], atol=2e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(m.singular_values, dtype=torch.float64), ref["sigma"], rtol=1e-6, atol=1e-7)
        assert _margin_ok(ref["max_cos"], EPSILON), f"{m.name}: a |cos| sits on ε; choose another seed"
        assert m.intruder_ranks == ref["ranks"], m.name
        assert m.largest_intruder_rank == ref["largest_rank"], m.name
        if ref["sigma_ratio"] is None:
            assert m.largest_intruder_sigma_ratio is None
        else:
            assert m.largest_intruder_sigma_ratio == pytest.approx(ref["sigma_ratio"], rel=1e-5)
        assert m.intruder_energy_share == pytest.approx(ref["energy"], rel=1e-5, abs=1e-9)
        assert m.epsilon_sweep == ref["eps_sweep"], m.name
        if k_sweep:
            assert m.k_sweep == ref["k_sweep"], m.name
        layer = "-" if m.layer is None else str(m.layer)
        expected_layers[layer] = expected_layers.get(layer, 0) + len(ref["ranks"])
        expected_types[m.module_type] = expected_types.get(m.module_type, 0) + len(ref["ranks"])
        for eps in EPSILONS:
            expected_eps[eps] += ref["eps_sweep"][eps]
    data = result.to_json()
    assert data["total_intruders"] == sum(expected_layers.values()) > 0
    assert data["by_layer"] == expected_layers
    assert data["by_module_type"] == expected_types
    assert result.epsilon_sweep() == expected_eps
    assert data["epsilon_sweep"] == {str(eps): n for eps, n in expected_eps.items()}
    assert data["intruder_energy_share_sum"] == pytest.approx(sum(m.intruder_energy_share for m in result.matrices))
    assert data["matrices_with_intruders"] == sum(1 for m in result.matrices if m.intruders)
    if k_sweep:
        totals: dict[str, int] = {}
        for m in result.matrices:
            for label, n in _reference(base[m.name], tuned_state[m.name])["k_sweep"].items():
                totals[label] = totals.get(label, 0) + n
        assert data["k_sweep"] == totals


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_wide_lora_adapter_matches_dense_reference_through_lanczos(wide_models, tmp_path, monkeypatch, arch):
    adapter = _write_adapter(wide_models[arch], arch, tmp_path / "adapter", seed=3)
    tuned = merged_state(wide_models[arch], adapter)
    calls = _count_lanczos(monkeypatch)
    result = analyze(wide_models[arch], adapter, AnalyzeConfig(k=K, epsilon=EPSILON), cache_dir=tmp_path / "cache")
    assert result.tuned_kind == "lora" and len(calls) == len(result.matrices)  # every matrix went through ARPACK
    assert result.cache_misses == len(result.matrices)
    _assert_matches(result, wide_models[arch], tuned, k_sweep=False)
    # Again from the warm float32 cache, with the k-sweep (full spectrum of the small core): same answers.
    again = analyze(wide_models[arch], adapter, AnalyzeConfig(k=K, epsilon=EPSILON, k_sweep=True),
                    cache_dir=tmp_path / "cache")  # fmt: skip
    assert again.cache_hits == len(again.matrices) and again.cache_misses == 0
    _assert_matches(again, wide_models[arch], tuned, k_sweep=True)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_wide_dense_tuned_model_matches_dense_reference_through_lanczos(wide_models, tmp_path, monkeypatch, arch):
    tuned_dir = _write_dense_tuned(wide_models[arch], tmp_path / "tuned", seed=5)
    tuned = base_state(tuned_dir)
    calls = _count_lanczos(monkeypatch)
    result = analyze(wide_models[arch], tuned_dir, AnalyzeConfig(k=K, epsilon=EPSILON), cache_dir=tmp_path / "cache")
    # two ARPACK calls per matrix: the top-k of W_t, and the top direction of ΔW (intruder pressure)
    assert result.tuned_kind == "dense" and len(calls) == 2 * len(result.matrices)
    _assert_matches(result, wide_models[arch], tuned, k_sweep=False)
    swept = analyze(wide_models[arch], tuned_dir, AnalyzeConfig(k=K, epsilon=EPSILON, k_sweep=True),
                    cache_dir=tmp_path / "cache")  # fmt: skip
    _assert_matches(swept, wide_models[arch], tuned, k_sweep=True)


def test_rank_pattern_and_alpha_pattern_adapter_matches_peft_merge(wide_models, tmp_path):
    """Different r and α per module (PEFT's rank_pattern / alpha_pattern): ranks and scales follow peft's merge.
    (The factors are rescaled to a target norm of peft's delta, so an analyser that ignored α/r would be off.)"""
    adapter = _write_adapter(
        wide_models["llama"], "llama", tmp_path / "adapter", seed=4, r=2, lora_alpha=4,
        rank_pattern={"q_proj": 8, "down_proj": 1}, alpha_pattern={"q_proj": 3, "up_proj": 32},
    )  # fmt: skip
    import json

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["rank_pattern"] and config["alpha_pattern"]
    tuned = merged_state(wide_models["llama"], adapter)
    result = analyze(wide_models["llama"], adapter, cache_dir=tmp_path / "cache")
    ranks = {m.name.split(".")[-2]: m.lora_rank for m in result.matrices}
    assert ranks["q_proj"] == 8 and ranks["down_proj"] == 1 and ranks["k_proj"] == 2
    _assert_matches(result, wide_models["llama"], tuned, k_sweep=False)
