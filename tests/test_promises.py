"""Promises of the README and the documentation pages that had no test of their own: what `intrudim.spectral` exports
and the pure-math example (docs/python-api.md), the toy's thresholds (docs/toy.md), the matrix choice flags and the
float64 cache (docs/analyze.md, docs/definitions.md), the content-hashed cache (docs/performance.md), refused adapters,
and a real `train` run directory accepted by `analyze` (README, docs/analyze.md). Each test can fail: it compares with
a reference or a planted answer, and reads the page that makes the promise."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import base_state, dense_reference, write_peft_adapter
from safetensors.torch import save_file

from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.errors import IntrudimError, PickleRefusedError

ROOT = Path(__file__).resolve().parents[1]
PYTHON_API = ROOT / "docs" / "python-api.md"
TOY = ROOT / "docs" / "toy.md"


def _sentence(path: Path, start: str, end: str) -> str:
    """The text of ``path`` from ``start`` to ``end``, with line breaks read as spaces."""
    text = " ".join(path.read_text(encoding="utf-8").split())
    sentence = text[text.index(start) :]
    return sentence[: sentence.index(end)]


# --- intrudim.spectral exports what the Python API page names -------------------------------------------------


def _documented_spectral_names() -> list[str]:
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", _sentence(PYTHON_API, "`intrudim.spectral` (", "no I/O"))


def test_every_name_the_docs_give_for_intrudim_spectral_is_importable():
    names = _documented_spectral_names()
    assert {"thin_svd", "top_k_svd", "lora_core", "core_top_k", "toy_lambda_sweep"} <= set(names)
    spectral = importlib.import_module("intrudim.spectral")
    for name in names:
        assert hasattr(spectral, name), f"docs/python-api.md names intrudim.spectral.{name}, which does not exist"
    from intrudim.spectral import thin_svd  # the line that used to fail

    assert callable(thin_svd)
    for name in spectral.__all__:
        assert getattr(spectral, name) is not None


def test_the_pure_math_example_of_the_python_api_page_runs_and_finds_its_intruder(capsys):
    """The last Python block of docs/python-api.md plants one rank-1 update above σ_max and says it finds 1."""
    blocks = re.findall(r"```python\n(.*?)\n```", PYTHON_API.read_text(encoding="utf-8"), flags=re.S)
    example = next(block for block in reversed(blocks) if "from intrudim.spectral import" in block)
    assert "# 1" in example
    exec(compile(example, "docs/python-api.md", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip() == "1"


def test_python_api_names_in_the_docs_exist():
    import intrudim
    from intrudim.report.analysis_report import write_analysis_outputs

    assert callable(intrudim.analyze) and callable(write_analysis_outputs)
    assert intrudim.AnalyzeConfig().k == 10 and intrudim.AnalyzeConfig().epsilon == 0.5
    assert AnalyzeConfig(method="structured").method == "structured"
    fields = re.findall(r"`([a-z_]+)`", _sentence(PYTHON_API, "validated fields (", ";"))
    assert len(fields) >= 9
    for name in fields:  # each field the page names is a real, settable field of AnalyzeConfig
        assert name in AnalyzeConfig.__dataclass_fields__, f"docs/python-api.md names AnalyzeConfig.{name}"
    text = PYTHON_API.read_text(encoding="utf-8")
    for used in ("result.total_intruders", "m.intruder_ranks", "m.max_abs_cos", "m.intruder_energy_share",
                 "result.epsilon_sweep()", "result.to_json()", "result.summary_lines()"):  # fmt: skip
        assert used in text  # the page still shows them; each is checked to exist on a real result below
    from intrudim.analysis.results import AnalysisResult, MatrixResult

    for name in ("total_intruders", "epsilon_sweep", "to_json", "summary_lines"):
        assert hasattr(AnalysisResult, name)
    for name in ("intruder_ranks", "max_abs_cos", "intruder_energy_share", "shape", "name", "intruders"):
        assert name in MatrixResult.__dataclass_fields__


# --- the toy: the thresholds are measured, and planted cases give the known answer -----------------------------


@pytest.mark.parity
def test_toy_thresholds_on_a_planted_case_with_a_known_answer():
    """W = diag(d), v = e_m: v's direction is exactly e_m (|cos| 1) with σ = d_m + λ, so it is rank 1 exactly when
    λ > d₀ − d_m, and it is W's own singular vector, so never an intruder: the two measures differ."""
    from intrudim.spectral import toy_lambda_sweep

    d = torch.linspace(1.0, 0.5, 64, dtype=torch.float64)
    m = 40
    threshold = float(d[0] - d[m])  # σ_max = 1, so λ/σ_max = λ
    ratios = (0.0, threshold - 0.05, threshold - 0.01, threshold + 0.01, threshold + 0.05, 1.0, 3.0)
    v = torch.zeros(64, dtype=torch.float64)
    v[m] = 1.0
    sweep = toy_lambda_sweep(lambda_ratios=ratios, W=torch.diag(d), v=v, k=5)
    assert sweep.v_top_ratio == pytest.approx(threshold + 0.01)
    assert sweep.first_intruder_ratio is None and sweep.v_intruder_ratio is None
    assert sweep.points[0].v_rank == m + 1 and sweep.points[2].v_rank > 1 and sweep.points[3].v_rank == 1
    assert all(p.v_alignment == pytest.approx(1.0) for p in sweep.points)
    assert not sweep.gaussian and sweep.spike_threshold_ratio_theory is None


def test_toy_thresholds_on_the_default_gaussian_case_are_below_sigma_max():
    """docs/toy.md's numbers for `intrudim toy` (n = 768, seed 0): intruders from 0.5·σ_max, v on top from 0.75."""
    from intrudim.spectral import toy_findings, toy_lambda_sweep

    promise = _sentence(TOY, "At the default n = 768, seed 0", "Random-matrix theory")
    assert "intruders appear from λ = 0.5·σ_max" in promise and "top singular vector, itself an intruder, from 0.75·σ_max" in promise

    sweep = toy_lambda_sweep(768, seed=0)
    assert sweep.first_intruder_ratio == 0.5
    assert sweep.v_top_ratio == 0.75 and sweep.v_intruder_ratio == 0.75
    assert sweep.spike_threshold_ratio_theory == pytest.approx(0.5, abs=0.02)  # λ = 1, σ_max ≈ 2
    for p in sweep.points:  # n → ∞ theory √(1 − 1/λ²) once the spike is out of the bulk
        if p.lam_over_sigma_max >= 0.75:
            assert p.v_alignment == pytest.approx(p.v_alignment_theory, abs=0.03)
    findings = " ".join(toy_findings(sweep))
    assert "from λ = 0.5·σ_max" in findings and "from λ = 0.75·σ_max" in findings
    # Several seeds and sizes: always below σ_max, the claim the docs make.
    for n, seed in ((128, 1), (256, 2)):
        other = toy_lambda_sweep(n, seed=seed)
        assert other.first_intruder_ratio is not None and other.first_intruder_ratio < 1.0
        assert other.v_top_ratio is not None and other.v_top_ratio < 1.0


def test_toy_json_carries_the_thresholds(tmp_path):
    from typer.testing import CliRunner

    from intrudim.cli import app

    result = CliRunner().invoke(app, ["toy", "--n", "128", "--trials", "5", "--seed", "1", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "t" / "toy.json").read_text())["section5"]
    assert data["first_intruder_ratio"] == 0.5 and data["v_top_ratio"] == 0.75
    assert data["findings"] and "0.5·σ_max" in data["findings"][0]
    html = (tmp_path / "t" / "toy.html").read_text()
    assert "sufficient, not the threshold" in html and "from λ = 0.5·σ_max" in html


# --- which matrices -------------------------------------------------------------------------------------------


def _perturbed_copy(base_dir: Path, out: Path, keys: list[str], strength: float = 1.5) -> Path:
    """A dense 'tuned' model: a strong new rank-1 direction in each of ``keys``."""
    generator = torch.Generator().manual_seed(7)
    state = base_state(base_dir)
    for key in keys:
        W = state[key].to(torch.float64)
        u = torch.randn(W.shape[0], generator=generator, dtype=torch.float64)
        v = torch.randn(W.shape[1], generator=generator, dtype=torch.float64)
        state[key] = (W + strength * float(torch.linalg.matrix_norm(W, 2)) * torch.outer(u / u.norm(), v / v.norm())).float()
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    return out


@pytest.mark.parity
def test_include_embeddings_and_include_heads(tiny_models, tmp_path):
    keys = ["embeddings.word_embeddings.weight", "pooler.dense.weight", "encoder.layer.0.attention.self.query.weight"]
    tuned = _perturbed_copy(tiny_models["bert"], tmp_path / "tuned", keys)
    base, changed = base_state(tiny_models["bert"]), base_state(tuned)

    default = analyze(tiny_models["bert"], tuned, k=2, use_cache=False)
    names = {m.name for m in default.matrices}
    assert "encoder.layer.0.attention.self.query.weight" in names
    assert not any("embeddings" in n or "pooler" in n for n in names)

    heads = analyze(tiny_models["bert"], tuned, k=2, include_heads=True, use_cache=False)
    assert {m.name for m in heads.matrices} - names == {"pooler.dense.weight"}

    embeddings = analyze(tiny_models["bert"], tuned, k=2, include_embeddings=True, use_cache=False)
    added = {m.name for m in embeddings.matrices} - names
    assert added == {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                     "embeddings.token_type_embeddings.weight"}  # fmt: skip
    for result in (heads, embeddings):
        for m in result.matrices:
            ref = dense_reference(base[m.name], changed[m.name], 2, 0.5)
            assert m.intruder_ranks == ref["ranks"], m.name
    assert next(m for m in heads.matrices if m.name == "pooler.dense.weight").intruders >= 1
    assert next(m for m in embeddings.matrices if m.name == "embeddings.word_embeddings.weight").intruders >= 1


def test_include_embeddings_works_at_the_default_k(tiny_models):
    # BERT's token_type_embeddings is (2, hidden): fewer than k=10 singular vectors, so it is skipped, named.
    result = analyze(tiny_models["bert"], tiny_models["bert"], include_embeddings=True, use_cache=False)
    assert any(m.name == "embeddings.word_embeddings.weight" for m in result.matrices)
    assert any(s["name"] == "embeddings.token_type_embeddings.weight" and "fewer than k=10" in s["reason"]
               for s in result.skipped)


# --- the base SVD cache -------------------------------------------------------------------------------------------


@pytest.mark.parity
def test_changed_matrix_misses_the_cache_and_a_damaged_entry_is_recomputed(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    first = analyze(tiny_models["bert"], tiny_models["bert"], cache_dir=cache)
    n = len(first.matrices)
    assert (first.cache_hits, first.cache_misses) == (0, n)
    entries = sorted(cache.rglob("*.safetensors"))
    assert len(entries) == n

    # One base matrix changed in one value: exactly that one misses (content hash, not name).
    changed = tmp_path / "changed_base"
    state = base_state(tiny_models["bert"])
    state["encoder.layer.1.output.dense.weight"][0, 0] += 1e-3
    changed.mkdir()
    save_file(state, str(changed / "model.safetensors"))
    (changed / "config.json").write_text((tiny_models["bert"] / "config.json").read_text())
    second = analyze(changed, changed, cache_dir=cache)
    assert (second.cache_hits, second.cache_misses) == (n - 1, 1)

    # A damaged entry (truncated file) is recomputed, replaced, and the answer is the same.
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2, strength=2.0)
    reference = analyze(tiny_models["bert"], adapter, use_cache=False)
    for entry in entries[:3]:
        entry.write_bytes(entry.read_bytes()[:40])
    repaired = analyze(tiny_models["bert"], adapter, cache_dir=cache, cache_dtype="float64")
    assert repaired.cache_misses >= 3
    assert [m.intruder_ranks for m in repaired.matrices] == [m.intruder_ranks for m in reference.matrices]
    assert all(e.stat().st_size > 1000 for e in entries[:3])  # rewritten whole
    warm = analyze(tiny_models["bert"], adapter, cache_dir=cache)
    assert warm.cache_misses == 0


@pytest.mark.parity
def test_float64_cache_gives_the_same_answer_as_no_cache(tiny_models, tmp_path):
    """Counts, ranks and sweeps are identical; max |cos| and σ agree to float64 rounding (1e-14). (Not bit for bit:
    measured differences of one ulp on the LoRA path, so docs/analyze.md promises rounding, not identity.)"""
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=3, strength=2.0)
    for tuned in (adapter, tiny_models["llama"]):
        plain = analyze(tiny_models["llama"], tuned, use_cache=False, k_sweep=True)
        analyze(tiny_models["llama"], tuned, cache_dir=tmp_path / "c64", cache_dtype="float64")  # fill
        cached = analyze(tiny_models["llama"], tuned, cache_dir=tmp_path / "c64", cache_dtype="float64", k_sweep=True)
        assert cached.cache_hits == len(cached.matrices)
        assert plain.total_intruders == cached.total_intruders
        for a, b in zip(plain.matrices, cached.matrices, strict=True):
            assert a.intruder_ranks == b.intruder_ranks and a.k_sweep == b.k_sweep, a.name
            assert a.epsilon_sweep == b.epsilon_sweep
            torch.testing.assert_close(torch.tensor(a.max_abs_cos), torch.tensor(b.max_abs_cos), rtol=0, atol=1e-14)
            torch.testing.assert_close(torch.tensor(a.singular_values), torch.tensor(b.singular_values), rtol=1e-14, atol=0)


# --- refused adapters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA"])
def test_non_lora_peft_adapters_are_refused_with_advice(tiny_models, tmp_path, peft_type):
    from peft import IA3Config, LoHaConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_models["bert"]))
    if peft_type == "IA3":
        config = IA3Config(target_modules=["query", "value", "output.dense"], feedforward_modules=["output.dense"])
    else:
        config = LoHaConfig(r=2, target_modules=["query", "value"])
    get_peft_model(model, config).save_pretrained(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == peft_type
    with pytest.raises(IntrudimError, match=rf"{peft_type} adapter; intrudim analyses LoRA adapters.*merge_and_unload"):
        analyze(tiny_models["bert"], tmp_path / "adapter", use_cache=False)


@pytest.mark.parity
def test_pickled_adapter_is_refused_unless_allowed(tiny_models, tmp_path):
    from safetensors.torch import load_file

    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2, strength=2.0)
    expected = analyze(tiny_models["bert"], adapter, use_cache=False)
    state = load_file(str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(state, str(adapter / "adapter_model.bin"))
    with pytest.raises(PickleRefusedError, match=r"adapter_model\.bin.*--allow-pickle"):
        analyze(tiny_models["bert"], adapter, use_cache=False)
    allowed = analyze(tiny_models["bert"], adapter, use_cache=False, allow_pickle=True)
    assert [m.intruder_ranks for m in allowed.matrices] == [m.intruder_ranks for m in expected.matrices]


# --- a real training run directory -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parity
def test_a_real_train_run_directory_is_accepted_by_analyze(tmp_path):
    """A run written by `intrudim.train` itself (tiny BERT, 4 steps), given to `analyze` as TUNED, equals the
    analysis of its final adapter, which equals the dense reference of peft's merge."""
    import test_train

    from intrudim.train import TrainConfig, train

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        vocab_size = test_train._save_tokenizer(model_dir)
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(model_dir))  # fmt: skip
        config = TrainConfig(model=str(model_dir), task="sentiment", method="lora", rank=2, max_steps=4, eval_every=4,
                             checkpoint_every=None, max_train_examples=64, max_validation_examples=16,
                             eval_batch_size=16, max_length=32, log_every=2, lr=5e-2)  # fmt: skip
        run = tmp_path / "run"
        train(config, run, progress=False, figures=False)
    finally:
        torch.set_num_threads(previous)
    from_run = analyze(model_dir, run, k=5, use_cache=False)
    from_final = analyze(model_dir, run / "final", k=5, use_cache=False)
    assert from_run.tuned_kind == "lora" and len(from_run.matrices) == 12
    assert [m.max_abs_cos for m in from_run.matrices] == [m.max_abs_cos for m in from_final.matrices]
    from peft import PeftModel

    from intrudim.models.loading import load_base_model

    base = base_state(model_dir)
    model, _ = load_base_model(model_dir, 2)
    merged = PeftModel.from_pretrained(model, str(run / "final")).merge_and_unload().state_dict()
    for m in from_run.matrices:
        key = next(k for k in merged if k == m.name or k.endswith("." + m.name))
        ref = dense_reference(base[m.name], merged[key], 5, 0.5)
        torch.testing.assert_close(torch.tensor(m.max_abs_cos, dtype=torch.float64), ref["max_cos"], atol=1e-6, rtol=0)
        assert m.intruder_ranks == ref["ranks"] or (ref["max_cos"] - 0.5).abs().min() < 1e-6
