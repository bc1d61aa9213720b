"""`repair`: exact PEFT adapters of rank r + |I| (parity with a dense float64 reference of W'), controls,
unchanged adapters bit for bit, dense (full fine-tuning) checkpoints, GPT-2 Conv1D, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import base_state, dense_reference, write_peft_adapter

from intrudim.errors import IntrudimError
from intrudim.repair import RepairConfig, repair

pytestmark = pytest.mark.parity


def _dense_repair(W0: torch.Tensor, Wt: torch.Tensor, k: int, epsilon: float, lam: float) -> torch.Tensor:
    """Independent reference: full float64 SVDs of W₀ and W_t, scale the intruders' σ by λ."""
    ref = dense_reference(W0, Wt, k, epsilon)
    U, S, Vh = torch.linalg.svd(Wt.to(torch.float64), full_matrices=False)
    out = Wt.to(torch.float64).clone()
    for rank in ref["ranks"]:
        j = rank - 1
        out += (lam - 1.0) * S[j] * torch.outer(U[:, j], Vh[j])
    return out


def _peft_merged(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir), dtype=torch.float64)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_repaired_adapter_is_exact_and_loads_in_peft(tiny_models, tmp_path, arch):
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=2, strength=2.0, seed=5)
    lam = 0.25
    result = repair(tiny_models[arch], adapter, lam=lam, k=6, out=tmp_path / "out", use_cache=False)
    assert result.total_intruders > 0 and not result.unchanged
    out_adapter = tmp_path / "out" / "adapter"
    config = json.loads((out_adapter / "adapter_config.json").read_text())
    base = base_state(tiny_models[arch])
    tuned = _peft_merged(tiny_models[arch], adapter)  # peft's own merge of the input adapter
    repaired = _peft_merged(tiny_models[arch], out_adapter)  # and of the repaired one
    transposed = arch == "gpt2"
    checked = 0
    for m in result.matrices:
        W0, Wt, Wr = base[m.name], tuned[m.name], repaired[m.name]
        if transposed:
            W0, Wt, Wr = W0.T, Wt.T, Wr.T
        expected = _dense_repair(W0, Wt, 6, 0.5, lam)
        assert m.intruder_ranks == dense_reference(W0, Wt, 6, 0.5)["ranks"], m.name
        error = float(torch.linalg.matrix_norm(Wr.to(torch.float64) - expected) / torch.linalg.matrix_norm(expected))
        assert error < 1e-4, (m.name, error)
        if m.intruder_ranks:
            checked += 1
            assert m.rank_added == len(m.intruder_ranks)
            assert any(v == 2 + m.rank_added for v in config["rank_pattern"].values())
            assert m.sigma_after == pytest.approx([lam * s for s in m.sigma_before])
    assert checked > 0
    saved = json.loads((tmp_path / "out" / "repair.json").read_text())
    assert saved["total_intruders"] == result.total_intruders and saved["lambda"] == lam


def test_adapter_without_intruders_is_copied_bit_for_bit(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "adapter", r=2, strength=0.001, seed=1)
    result = repair(tiny_models["bert"], adapter, out=tmp_path / "out", use_cache=False)
    assert result.total_intruders == 0 and result.unchanged
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "out" / "adapter" / name).read_bytes() == (adapter / name).read_bytes()
    assert "unchanged" in " ".join(result.summary_lines())


def test_lambda_one_changes_nothing(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    result = repair(tiny_models["llama"], adapter, lam=1.0, k=6, out=tmp_path / "out", use_cache=False)
    assert result.total_intruders > 0 and result.unchanged


def test_controls_remove_the_same_norm_and_scale_other_directions(tiny_models, tmp_path):
    arch = "llama"
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=2, strength=2.0, seed=5)
    lam = 0.5
    runs = {
        control: repair(tiny_models[arch], adapter, lam=lam, k=6, control=control, out=tmp_path / control,
                        use_cache=False)
        for control in ("none", "non-intruder", "shrink")
    }  # fmt: skip
    base = base_state(tiny_models[arch])
    tuned = _peft_merged(tiny_models[arch], adapter)
    shrunk = _peft_merged(tiny_models[arch], tmp_path / "shrink" / "adapter")
    other = _peft_merged(tiny_models[arch], tmp_path / "non-intruder" / "adapter")
    for m_int, m_non, m_shr in zip(*(runs[c].matrices for c in ("none", "non-intruder", "shrink")), strict=True):
        W0, Wt = base[m_int.name].to(torch.float64), tuned[m_int.name].to(torch.float64)
        if not m_int.intruder_ranks:
            assert m_shr.removed_frobenius == 0 and m_non.removed_frobenius == 0
            continue
        # non-intruder: as many directions, none of them an intruder
        assert len(m_non.scaled_ranks) == len(m_int.scaled_ranks)
        assert not set(m_non.scaled_ranks) & set(m_int.intruder_ranks)
        U, S, Vh = torch.linalg.svd(Wt, full_matrices=False)
        expected = Wt.clone()
        for rank in m_non.scaled_ranks:
            expected += (lam - 1.0) * S[rank - 1] * torch.outer(U[:, rank - 1], Vh[rank - 1])
        assert torch.allclose(other[m_int.name].to(torch.float64), expected, atol=1e-5, rtol=0)
        # shrink: W₀ + c·ΔW removing exactly the intruder repair's Frobenius norm (when it can)
        removed = float(torch.linalg.matrix_norm(shrunk[m_int.name].to(torch.float64) - Wt))
        if m_shr.norm_matched:
            assert removed == pytest.approx(m_int.removed_frobenius, rel=1e-4)
        c = m_shr.shrink_c
        assert torch.allclose(shrunk[m_int.name].to(torch.float64), W0 + c * (Wt - W0), atol=1e-5, rtol=0)


def test_dense_fine_tuned_model_is_repaired_sharded_like_the_input(tiny_models, tmp_path):
    """A fully fine-tuned checkpoint (a dense model with a planted rank-1 intruder), saved in shards."""
    from conftest import tiny_bert

    model = tiny_bert()
    generator = torch.Generator().manual_seed(0)
    name = "encoder.layer.1.attention.self.query.weight"
    with torch.no_grad():
        W = dict(model.named_parameters())[name]
        u = torch.randn(W.shape[0], generator=generator)
        v = torch.randn(W.shape[1], generator=generator)
        W.add_(3.0 * torch.outer(u / u.norm(), v / v.norm()))
    tuned = tmp_path / "tuned"
    model.save_pretrained(str(tuned), max_shard_size="60KB")
    assert (tuned / "model.safetensors.index.json").exists()
    result = repair(tiny_models["bert"], tuned, lam=0.0, out=tmp_path / "out", use_cache=False)
    assert result.tuned_kind == "dense"
    out_model = tmp_path / "out" / "model"
    assert sorted(p.name for p in out_model.glob("*.safetensors")) == sorted(p.name for p in tuned.glob("*.safetensors"))
    from transformers import BertModel

    repaired = dict(BertModel.from_pretrained(str(out_model)).named_parameters())
    base = base_state(tiny_models["bert"])
    tuned_state = dict(model.named_parameters())
    for m in result.matrices:
        expected = _dense_repair(base[m.name], tuned_state[m.name].detach(), 10, 0.5, 0.0)
        assert torch.allclose(repaired[m.name].to(torch.float64), expected, atol=1e-5), m.name
    assert next(m for m in result.matrices if m.name == name).intruder_ranks == [1]


def test_merged_output_equals_the_repaired_adapter_merged(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    repair(tiny_models["bert"], adapter, lam=0.5, k=6, out=tmp_path / "a", use_cache=False)
    repair(tiny_models["bert"], adapter, lam=0.5, k=6, out=tmp_path / "m", merged=True, use_cache=False)
    from transformers import BertModel

    merged = BertModel.from_pretrained(str(tmp_path / "m" / "model")).state_dict()
    expected = _peft_merged(tiny_models["bert"], tmp_path / "a" / "adapter")
    for key, value in merged.items():
        assert torch.allclose(value.to(torch.float64), expected[key], atol=1e-5), key


def test_bf16_adapter_is_repaired_in_bf16(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    result = repair(tiny_models["llama"], adapter, k=6, out=tmp_path / "out", use_cache=False)
    assert result.total_intruders > 0
    written = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    assert {v.dtype for v in written.values()} == {torch.bfloat16}


def test_bad_input(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    for bad in (-0.5, float("nan"), "x"):
        with pytest.raises(IntrudimError, match="number"):
            RepairConfig(lam=bad)
    with pytest.raises(IntrudimError, match="control"):
        RepairConfig(control="random")
    with pytest.raises(IntrudimError, match="does not fit|no weight"):
        repair(tiny_models["llama"], adapter, out=tmp_path / "wrong", use_cache=False)
    assert not (tmp_path / "wrong" / "adapter").exists()
    repair(tiny_models["bert"], adapter, k=6, out=tmp_path / "out", use_cache=False)
    before = (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(IntrudimError, match="already exists"):
        repair(tiny_models["bert"], adapter, lam=0.0, k=6, out=tmp_path / "out", use_cache=False)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes() == before
    repair(tiny_models["bert"], adapter, lam=0.0, k=6, out=tmp_path / "out", use_cache=False, overwrite=True)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes() != before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IntrudimError, match="Cannot write"):
        repair(tiny_models["bert"], adapter, out=blocker / "out", use_cache=False)



def test_lora_on_an_embedding_table_is_repaired_from_its_factors(tiny_models, tmp_path):
    """lora_embedding_A/B: same side as analyze --include-embeddings on the merged model; exact W'."""
    arch = "llama"
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=2, strength=2.0, seed=5,
                                 targets=["embed_tokens", "q_proj"])  # fmt: skip
    result = repair(tiny_models[arch], adapter, lam=0.0, k=6, include_embeddings=True, out=tmp_path / "out",
                    use_cache=False)  # fmt: skip
    embedding = next(m for m in result.matrices if m.name == "embed_tokens.weight")
    base, tuned = base_state(tiny_models[arch]), _peft_merged(tiny_models[arch], adapter)
    assert embedding.intruder_ranks == dense_reference(base[embedding.name], tuned[embedding.name], 6, 0.5)["ranks"]
    assert embedding.intruder_ranks, "the planted embedding update must have intruders, or the test proves nothing"
    repaired = _peft_merged(tiny_models[arch], tmp_path / "out" / "adapter")
    expected = _dense_repair(base[embedding.name], tuned[embedding.name], 6, 0.5, 0.0)
    error = torch.linalg.matrix_norm(repaired[embedding.name].to(torch.float64) - expected) / torch.linalg.matrix_norm(expected)
    assert float(error) < 1e-4
    default = repair(tiny_models[arch], adapter, k=6, out=tmp_path / "default", use_cache=False)
    assert any(s["name"] == "embed_tokens.weight" for s in default.skipped)


def test_merged_needs_a_base_folder_and_a_pickled_dense_model_is_refused_for_writing(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    single = tiny_models["bert"] / "model.safetensors"
    with pytest.raises(IntrudimError, match="--merged needs BASE as a model directory"):
        repair(single, adapter, k=6, merged=True, out=tmp_path / "m", use_cache=False)
    assert not (tmp_path / "m" / "model").exists()
    # a fully fine-tuned model given as a pickle (opted in) is analysed, but its repair is written as safetensors
    # shards like its input, which needs a safetensors input: a clear error, nothing left behind
    tuned = tmp_path / "pickled"
    tuned.mkdir()
    state = {k: v.clone() for k, v in base_state(tiny_models["bert"]).items()}
    name = "encoder.layer.1.attention.self.query.weight"
    u, v = torch.randn(state[name].shape[0]), torch.randn(state[name].shape[1])
    state[name] += 3.0 * torch.outer(u / u.norm(), v / v.norm())
    torch.save(state, tuned / "pytorch_model.bin")
    shutil.copy(tiny_models["bert"] / "config.json", tuned / "config.json")
    with pytest.raises(IntrudimError, match="pickle checkpoint"):
        repair(tiny_models["bert"], tuned, lam=0.0, allow_pickle=True, out=tmp_path / "p", use_cache=False)
    assert not (tmp_path / "p" / "model").exists()
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # no half-built folder


# ------------------------------------------------------------------ what is left after a repair (issue: What a user sees)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_remaining_intruders_equal_analyze_of_the_written_adapter(tiny_models, tmp_path, arch):
    """A σ scaled by λ = 0.75 often still ranks in the top-k as a new direction: the repair counts what is left, per
    matrix and in total, and the count is what `intrudim.analyze(BASE, OUT/adapter)` finds in the written adapter."""
    import intrudim

    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=2, strength=2.0, seed=5)
    remaining = {}
    for lam, control in ((0.75, "none"), (0.0, "none"), (0.5, "shrink"), (0.5, "non-intruder")):
        out = tmp_path / f"{lam}-{control}"
        result = repair(tiny_models[arch], adapter, lam=lam, k=6, control=control, out=out, use_cache=False)
        analysed = intrudim.analyze(tiny_models[arch], out / "adapter", k=6, use_cache=False)
        by_name = {m.name: m.intruder_ranks for m in analysed.matrices}
        for m in result.matrices:
            assert m.remaining_ranks == by_name[m.name], (lam, control, m.name)
        assert result.remaining_intruders == analysed.total_intruders, (lam, control)
        saved = json.loads((out / "repair.json").read_text())
        assert saved["remaining_intruders"] == analysed.total_intruders
        assert [m["remaining_ranks"] for m in saved["matrices"]] == [m.remaining_ranks for m in result.matrices]
        remaining[(lam, control)] = result.remaining_intruders
        assert f"{result.remaining_intruders} intruder dimensions remain" in " ".join(result.summary_lines())
    # the planted case: λ = 0.75 leaves some, λ = 0 none; the non-intruder control leaves every intruder in place
    assert 0 < remaining[(0.75, "none")] <= result.total_intruders and remaining[(0.0, "none")] == 0
    assert remaining[(0.5, "non-intruder")] == result.total_intruders


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_remaining_intruders_of_a_merged_repair_equal_analyze_of_the_merged_model(tiny_models, tmp_path, arch):
    """`repair --merged` writes OUT/model (W' merged into the base): the count of what is left is what `analyze`
    finds in that merged model, per matrix and in total."""
    import intrudim

    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=2, strength=2.0, seed=5)
    result = repair(tiny_models[arch], adapter, lam=0.75, k=6, out=tmp_path / "m", merged=True, use_cache=False)
    assert (tmp_path / "m" / "model").is_dir() and not (tmp_path / "m" / "adapter").exists()
    analysed = intrudim.analyze(tiny_models[arch], tmp_path / "m" / "model", k=6, use_cache=False)
    by_name = {m.name: m.intruder_ranks for m in analysed.matrices}
    assert result.total_intruders > 0
    for m in result.matrices:
        assert m.remaining_ranks == by_name[m.name], m.name
    assert result.remaining_intruders == analysed.total_intruders


def test_remaining_intruders_of_a_dense_bf16_and_in_memory_repair_equal_analyze(tiny_models, tmp_path):
    """The same count for a fully fine-tuned model (merged weights), a bf16 adapter (factors rounded as written) and
    a PeftModel repaired in memory (its new adapter analysed in memory)."""
    from conftest import tiny_bert
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    import intrudim

    model = tiny_bert()
    generator = torch.Generator().manual_seed(0)
    name = "encoder.layer.1.attention.self.query.weight"
    with torch.no_grad():
        W = dict(model.named_parameters())[name]
        u, v = torch.randn(W.shape[0], generator=generator), torch.randn(W.shape[1], generator=generator)
        W.add_(3.0 * torch.outer(u / u.norm(), v / v.norm()))
    model.save_pretrained(str(tmp_path / "dense"))
    dense = repair(tiny_models["bert"], tmp_path / "dense", lam=0.9, out=tmp_path / "d", use_cache=False)
    analysed = intrudim.analyze(tiny_models["bert"], tmp_path / "d" / "model", use_cache=False)
    assert dense.remaining_intruders == analysed.total_intruders == 1  # 3.0 → 2.7 is still the top, still new
    assert next(m for m in dense.matrices if m.name == name).remaining_ranks == [1]

    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    bf16 = repair(tiny_models["llama"], adapter, k=6, out=tmp_path / "b", use_cache=False)
    assert bf16.remaining_intruders == intrudim.analyze(tiny_models["llama"], tmp_path / "b" / "adapter", k=6,
                                                        use_cache=False).total_intruders  # fmt: skip

    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_models["llama"])), str(adapter))
    in_memory = intrudim.repair(peft_model, lam=0.75, k=6, use_cache=False)
    assert in_memory.remaining_intruders == bf16.remaining_intruders == intrudim.analyze(
        peft_model, adapter_name="repaired", k=6, use_cache=False).total_intruders  # fmt: skip


def test_repair_writes_a_report_and_refuses_to_replace_another_one(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    result = repair(tiny_models["llama"], adapter, k=6, out=tmp_path / "out", use_cache=False)
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="per-matrix"' in html and "data:image/png;base64," in html
    assert f"<b>{result.remaining_intruders}</b> in" in html and "#1" in html and "λ" in html
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.html").write_text("an analysis report")
    with pytest.raises(IntrudimError, match="report.html' already exists"):
        repair(tiny_models["llama"], adapter, k=6, out=tmp_path / "other", use_cache=False)
    assert (tmp_path / "other" / "report.html").read_text() == "an analysis report"
    assert not (tmp_path / "other" / "adapter").exists()


def test_repair_prints_at_most_top_matrices_those_with_intruders_left_first(tiny_models, tmp_path):
    """`repair --top N`: at most N rows, the matrices where intruders remain first, and one line counting the
    rest; `--all` prints every repaired matrix."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from intrudim.cli import app
    from intrudim.cli.repair import repaired_to_print

    rows = [SimpleNamespace(name=f"m{i}", remaining_ranks=[1] if i in (3, 5) else []) for i in range(6)]
    assert [m.name for m in repaired_to_print(rows, 3)] == ["m3", "m5", "m0"]
    assert repaired_to_print(rows, 6) == rows and repaired_to_print(rows, None) == rows

    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    runner = CliRunner()
    done = runner.invoke(app, ["repair", str(tiny_models["llama"]), str(adapter), "--out", str(tmp_path / "a"),
                               "--k", "6", "--top", "1"], env={"COLUMNS": "80"})  # fmt: skip
    assert done.exit_code == 0, done.output
    changed = json.loads((tmp_path / "a" / "repair.json").read_text())["matrices"]
    changed = [m for m in changed if m["removed_frobenius"] > 0]
    assert len(changed) > 1
    assert f"… and {len(changed) - 1} more repaired matrices not listed" in " ".join(done.output.split())
    every = runner.invoke(app, ["repair", str(tiny_models["llama"]), str(adapter), "--out", str(tmp_path / "b"),
                                "--k", "6", "--all"], env={"COLUMNS": "80"})  # fmt: skip
    assert every.exit_code == 0 and "not listed" not in every.output


def _causal_llama_and_plain_adapter(root: Path, *, bare: bool = False) -> tuple[Path, Path]:
    """A tiny LlamaForCausalLM saved as a base, and an adapter a user writes with a plain LoraConfig (no task_type)
    on the model they loaded with AutoModelForCausalLM (or its bare body, ``bare``), B planted large."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = root / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(str(base))  # fmt: skip
    model = LlamaForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model.model if bare else model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(3.0 * torch.randn(param.shape, generator=generator))
    adapter = root / "adapter"
    peft_model.save_pretrained(str(adapter))
    return base, adapter


def test_merged_repair_of_a_plain_lora_config_adapter_on_a_causal_lm_merges_it(tmp_path):
    """The newcomer's case: no task_type, keys of LlamaForCausalLM (model.layers.N). `repair --merged` must merge the
    repaired adapter into BASE's own class: the written weights are peft's merge of the repaired adapter, not BASE
    (it once loaded a bare LlamaModel, matched no key and wrote BASE unchanged), and what is left is what analyze finds."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    import intrudim

    base, adapter = _causal_llama_and_plain_adapter(tmp_path)
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] is None
    result = repair(base, adapter, lam=0.5, k=6, out=tmp_path / "m", merged=True, use_cache=False)
    assert result.total_intruders > 0
    written = LlamaForCausalLM.from_pretrained(str(tmp_path / "m" / "model")).state_dict()
    original = LlamaForCausalLM.from_pretrained(str(base)).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(written[name], original[name])  # the adapter was merged, not dropped
    repair(base, adapter, lam=0.5, k=6, out=tmp_path / "a", use_cache=False)  # the repaired adapter itself
    expected = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(str(base)), str(tmp_path / "a" / "adapter"))
    expected = expected.merge_and_unload().state_dict()
    for key in (name, "model.layers.1.mlp.up_proj.weight"):
        assert torch.allclose(written[key], expected[key], atol=1e-5), key
    analysed = intrudim.analyze(base, tmp_path / "m" / "model", k=6, use_cache=False)
    assert result.remaining_intruders == analysed.total_intruders


def test_an_adapter_that_fits_no_module_is_one_clear_error_not_a_silent_no_op(tmp_path):
    """task_type CAUSAL_LM, but saved from the bare body (keys layers.N, no model.): peft would load nothing and
    merge nothing; intrudim says which tensor matches no module."""
    from intrudim.models.tuned import AdapterMismatchError

    base, adapter = _causal_llama_and_plain_adapter(tmp_path, bare=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "task_type": "CAUSAL_LM"}))
    with pytest.raises(AdapterMismatchError, match=r"does not fit LlamaForCausalLM: \d+ of its \d+ LoRA tensors"):
        repair(base, adapter, lam=0.5, k=6, out=tmp_path / "m", merged=True, use_cache=False)
