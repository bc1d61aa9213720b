"""`analyze` end to end on real PEFT adapters and dense models, against the independent dense reference."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_state, dense_reference, merged_state, write_peft_adapter
from typer.testing import CliRunner

import intrudim
from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.cli import app
from intrudim.weights.selection import is_conv1d

K, EPS = 10, 0.5


def reference_counts(base_dir, tuned_state, names, conv1d: bool):
    """Reference per matrix: the merged/tuned weights from peft or the model file, dense float64 SVDs."""
    base = base_state(base_dir)
    out = {}
    for name in names:
        W0, Wt = base[name], tuned_state[name]
        if conv1d and is_conv1d(name, "gpt2"):
            W0, Wt = W0.T, Wt.T
        out[name] = dense_reference(W0, Wt, K, EPS)
    return out


ADAPTER_CASES = [
    # (arch, r, lora_alpha, use_rslora, targets, strength)
    ("bert", 2, None, False, None, 1.0),
    ("bert", 3, 5.0, True, ["query", "value"], 1.0),
    ("llama", 2, 7.0, False, None, 1.0),
    ("llama", 4, None, True, ["k_proj", "up_proj", "down_proj"], 1.0),
    ("gpt2", 2, None, False, None, 1.0),
    ("gpt2", 1, 3.0, False, ["c_fc", "c_proj"], 3.0),
]


@pytest.mark.parametrize("arch,r,alpha,rslora,targets,strength", ADAPTER_CASES)
def test_peft_adapter_counts_equal_dense_reference(tiny_models, tmp_path, arch, r, alpha, rslora, targets, strength):
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=r, lora_alpha=alpha,
                                 use_rslora=rslora, targets=targets, seed=r, strength=strength)  # fmt: skip
    result = analyze(tiny_models[arch], adapter, AnalyzeConfig(k=K, epsilon=EPS), cache_dir=tmp_path / "cache")
    assert result.tuned_kind == "lora"
    names = [m.name for m in result.matrices]
    assert names, "the adapter's matrices must be analysed"
    merged = merged_state(tiny_models[arch], adapter)
    reference = reference_counts(tiny_models[arch], merged, names, conv1d=(arch == "gpt2"))
    for m in result.matrices:
        ref = reference[m.name]
        assert m.intruder_ranks == ref["ranks"], m.name
        # peft merges in float32; compare at float32 precision
        torch.testing.assert_close(torch.tensor(m.max_abs_cos, dtype=torch.float64), ref["max_cos"], rtol=0, atol=2e-4)
        torch.testing.assert_close(torch.tensor(m.singular_values, dtype=torch.float64), ref["sigma"], rtol=1e-4, atol=1e-5)
    assert result.total_intruders == sum(r["count"] for r in reference.values())
    # The planted strengths vary per module: the set must contain both kinds, so the test can fail.
    assert 0 < result.total_intruders
    assert any(m.intruders == 0 for m in result.matrices)


def test_adapter_with_target_subset_analyses_only_those(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", targets=["q_proj"], r=2)
    result = analyze(tiny_models["llama"], adapter, cache_dir=tmp_path / "cache")
    assert [m.name for m in result.matrices] == [f"layers.{i}.self_attn.q_proj.weight" for i in range(2)]
    assert all(m.lora_rank == 2 for m in result.matrices)


def test_conv1d_is_analysed_transposed(tiny_models, tmp_path):
    """GPT-2 c_attn is stored (in, out) = (48, 144): analysed as (144, 48) like nn.Linear."""
    adapter = write_peft_adapter(tiny_models["gpt2"], "gpt2", tmp_path / "a", targets=["c_attn"], r=2, strength=2.0)
    result = analyze(tiny_models["gpt2"], adapter, cache_dir=tmp_path / "cache")
    c_attn = [m for m in result.matrices if m.module_type == "attn.c_attn"]
    assert c_attn and all(m.shape == (144, 48) and m.transposed for m in c_attn)
    # Comparing the wrong side (the stored orientation) gives different answers: the reference agrees with us.
    merged = merged_state(tiny_models["gpt2"], adapter)
    base = base_state(tiny_models["gpt2"])
    for m in c_attn:
        right = dense_reference(base[m.name].T, merged[m.name].T, K, EPS)
        assert m.intruder_ranks == right["ranks"]


def test_structured_and_dense_methods_agree(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=3, seed=7)
    fast = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c", k_sweep=True)
    slow = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c", method="dense", k_sweep=True)
    assert [m.intruder_ranks for m in fast.matrices] == [m.intruder_ranks for m in slow.matrices]
    assert fast.k_sweep() == slow.k_sweep()
    for a, b in zip(fast.matrices, slow.matrices, strict=True):
        assert a.effective_rank_delta == pytest.approx(b.effective_rank_delta, rel=1e-6)
        assert a.intruder_energy_share == pytest.approx(b.intruder_energy_share, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_full_ft_like_dense_model_has_no_intruders(tiny_models, tmp_path, arch):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_models[arch]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim == 2:
                noise = torch.randn(p.shape, generator=g)
                p.add_(0.01 * noise * p.norm() / noise.norm())
    model.save_pretrained(str(tmp_path / "tuned"))
    result = analyze(tiny_models[arch], tmp_path / "tuned", cache_dir=tmp_path / "cache")
    assert result.tuned_kind == "dense"
    assert result.total_intruders == 0
    assert len(result.matrices) > 0
    tuned = base_state(tmp_path / "tuned")
    ref = reference_counts(tiny_models[arch], tuned, [m.name for m in result.matrices], conv1d=(arch == "gpt2"))
    assert sum(r["count"] for r in ref.values()) == 0
    for m in result.matrices:
        assert m.effective_rank_delta > 10  # a dense update has a high effective rank (Fig. 6)


def test_dense_model_with_planted_intruder(tiny_models, tmp_path):
    """A dense checkpoint (e.g. a merged LoRA) is analysed through the dense top-k path; counts match."""
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2, seed=3, strength=1.5)
    merged = merged_state(tiny_models["bert"], adapter)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp_path / "merged.safetensors"))
    dense = analyze(tiny_models["bert"], tmp_path / "merged.safetensors", cache_dir=tmp_path / "cache")
    lora = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "cache")
    assert dense.total_intruders == lora.total_intruders > 0
    by_name = {m.name: m for m in dense.matrices}
    for m in lora.matrices:
        assert by_name[m.name].intruder_ranks == m.intruder_ranks


def test_cache_is_reused_and_gives_identical_results(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2)
    first = analyze(tiny_models["llama"], adapter, cache_dir=tmp_path / "cache")
    second = analyze(tiny_models["llama"], adapter, cache_dir=tmp_path / "cache")
    assert first.cache_misses == len(first.matrices) and first.cache_hits == 0
    assert second.cache_hits == len(second.matrices) and second.cache_misses == 0
    assert [m.intruder_ranks for m in first.matrices] == [m.intruder_ranks for m in second.matrices]
    for a, b in zip(first.matrices, second.matrices, strict=True):  # float32 factors: equal to ~1e-7
        assert a.max_abs_cos == pytest.approx(b.max_abs_cos, abs=1e-6)
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == len(first.matrices)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    uncached = analyze(tiny_models["llama"], adapter, use_cache=False)
    assert [m.intruder_ranks for m in uncached.matrices] == [m.intruder_ranks for m in first.matrices]


def test_float64_cache_gives_the_same_counts(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    f32 = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c32")
    f64 = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c64", cache_dtype="float64")
    assert [m.intruder_ranks for m in f32.matrices] == [m.intruder_ranks for m in f64.matrices]


def test_json_document_has_the_promised_fields(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    data = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c").to_json()
    json.dumps(data)  # serialisable
    assert data["k"] == 10 and data["epsilon"] == 0.5
    assert data["total_intruders"] == sum(m["intruders"] for m in data["matrices"])
    first = data["matrices"][0]
    for key in ("name", "shape", "intruders", "intruder_ranks", "max_abs_cos", "singular_values", "effective_rank_delta"):
        assert key in first
    assert first["name"].startswith("encoder.layer.0.")
    assert len(first["max_abs_cos"]) == 10 and len(first["singular_values"]) == 10


def test_run_directory_resolves_to_its_final_adapter(tiny_models, tmp_path):
    run = tmp_path / "run"
    write_peft_adapter(tiny_models["bert"], "bert", run / "final", r=2)
    (run / "metrics.jsonl").write_text("")
    (run / "config.json").write_text(json.dumps({"base_model": str(tiny_models["bert"])}))
    via_run = analyze(tiny_models["bert"], run, cache_dir=tmp_path / "c")
    direct = analyze(tiny_models["bert"], run / "final", cache_dir=tmp_path / "c")
    assert via_run.total_intruders == direct.total_intruders


def test_public_api_keywords():
    assert intrudim.analyze is analyze
    with pytest.raises(intrudim.IntrudimError):
        AnalyzeConfig(epsilon=0.0)


def test_sharded_base_and_single_file_base_give_the_same_answer(tiny_models, tmp_path):
    """BASE as a sharded HF directory (model.safetensors.index.json) and as a single .safetensors file."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_models["llama"]))
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2)
    reference = analyze(tiny_models["llama"], adapter, use_cache=False)
    sharded = analyze(tmp_path / "sharded", adapter, use_cache=False)
    single = analyze(tiny_models["llama"] / "model.safetensors", adapter, use_cache=False)
    assert reference.total_intruders > 0
    for other in (sharded, single):
        assert [m.intruder_ranks for m in other.matrices] == [m.intruder_ranks for m in reference.matrices]


def test_lora_on_embeddings_is_skipped_by_default_and_analysed_from_its_factors_on_request(tiny_models, tmp_path):
    """LoRA on an embedding table (lora_embedding_A/B): left out by default, named in `skipped`; with
    --include-embeddings it is analysed from its factors, the same side as the merged model (left singular
    vectors of the (num_embeddings, dim) weight), equal to the dense reference on peft's own merge."""
    adapter = write_peft_adapter(
        tiny_models["bert"], "bert", tmp_path / "a", targets=["query", "word_embeddings"], r=2, strength=3.0, seed=5
    )
    from safetensors.torch import load_file

    assert any("lora_embedding_A" in key for key in load_file(str(adapter / "adapter_model.safetensors")))
    result = analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "cache")
    assert all(m.name.endswith("attention.self.query.weight") for m in result.matrices) and result.matrices
    skipped = [entry for entry in result.skipped if "lora_embedding" in entry["reason"]]
    assert [entry["name"] for entry in skipped] == ["embeddings.word_embeddings.weight"]
    assert "--include-embeddings" in skipped[0]["reason"]
    cli = CliRunner().invoke(app, ["analyze", str(tiny_models["bert"]), str(adapter), "--cache", str(tmp_path / "c")])
    assert cli.exit_code == 0, cli.output
    assert "--include-embeddings" in " ".join(cli.output.split())
    with_embeddings = analyze(tiny_models["bert"], adapter, k=6, include_embeddings=True, use_cache=False)
    embedding = next(m for m in with_embeddings.matrices if m.name == "embeddings.word_embeddings.weight")
    merged, base = merged_state(tiny_models["bert"], adapter), base_state(tiny_models["bert"])
    ref = dense_reference(base[embedding.name], merged[embedding.name], 6, 0.5)
    assert embedding.intruder_ranks == ref["ranks"]
    torch.testing.assert_close(torch.tensor(embedding.max_abs_cos, dtype=torch.float64), ref["max_cos"], rtol=0, atol=2e-4)
    only_embeddings = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "e", targets=["word_embeddings"], r=2)
    with pytest.raises(intrudim.IntrudimError, match="No matrices to analyse"):
        analyze(tiny_models["bert"], only_embeddings, cache_dir=tmp_path / "cache")
    assert analyze(tiny_models["bert"], only_embeddings, include_embeddings=True, use_cache=False).matrices
