"""What a LoRA adapter trains besides its factors: weights saved whole (PEFT's ``modules_to_save``, e.g. a fully
trained embedding table next to LoRA on the attention) and trainable tokens (new values for some rows of an
embedding). `analyze` compares them with BASE as a dense fine-tune, equal to the analysis of the merged model; left
out, they are listed with the reason; a weight BASE lacks or of another shape is listed, never compared; `repair`
repairs a weight saved whole as the merged model's repair does and writes it back whole, and leaves trainable
tokens' rows as they are and says so; the merge that `forgetting` uses includes them, as peft's does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train_saved_weights_
from safetensors.torch import load_file, save_file

from intrudim import analyze
from intrudim.repair import repair


def _adapter_with_full_weights(base: Path, out: Path, *, targets: list[str], full: list[str], fan_in_fan_out=False):
    """A peft-written adapter: random LoRA factors on ``targets`` and the ``full`` modules trained whole (strong
    dense noise); also the merged model (peft's merge_and_unload), the dense reference."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=targets, modules_to_save=full, init_lora_weights=False,
                        fan_in_fan_out=fan_in_fan_out)  # fmt: skip
    peft_model = get_peft_model(model, config)
    train_saved_weights_(peft_model, seed=11)
    peft_model.save_pretrained(str(out / "adapter"))
    peft_model.merge_and_unload().save_pretrained(str(out / "merged"))
    return out / "adapter", out / "merged"


def _by_name(result) -> dict:
    return {m.name: m for m in result.matrices}


@pytest.mark.parametrize(
    ("arch", "targets", "full", "full_weight"),
    [
        ("llama", ["q_proj"], ["embed_tokens"], "embed_tokens.weight"),
        ("gpt2", ["c_attn"], ["h.0.mlp.c_fc"], "h.0.mlp.c_fc.weight"),  # Conv1D: stored (in, out)
    ],
)
def test_a_weight_saved_whole_is_analysed_as_the_merged_model(tiny_models, tmp_path, arch, targets, full, full_weight):
    base = tiny_models[arch]
    adapter, merged = _adapter_with_full_weights(base, tmp_path, targets=targets, full=full,
                                                 fan_in_fan_out=arch == "gpt2")  # fmt: skip
    options = {"include_embeddings": True, "use_cache": False}
    found = _by_name(analyze(base, adapter, **options))
    reference = _by_name(analyze(base, merged, **options))
    name = next(n for n in found if n.endswith(full_weight))
    assert found[name].lora_rank is None  # compared as a dense fine-tune: W_t is the weight the adapter saved
    assert found[name].intruders > 0
    for key in [name] + [n for n in found if found[n].lora_rank is not None]:
        assert found[key].intruder_ranks == reference[key].intruder_ranks, key
        assert found[key].max_abs_cos == pytest.approx(reference[key].max_abs_cos, abs=1e-6), key
        assert found[key].singular_values == pytest.approx(reference[key].singular_values, rel=1e-6), key


def test_left_out_new_or_resized_weights_are_listed_with_the_reason(tiny_models, tmp_path):
    base = tiny_models["llama"]
    adapter, _ = _adapter_with_full_weights(base, tmp_path, targets=["q_proj"], full=["embed_tokens"])
    default = analyze(base, adapter, use_cache=False)  # embeddings are left out by default
    assert all(m.lora_rank is not None for m in default.matrices)
    reasons = {s["name"]: s["reason"] for s in default.skipped}
    assert "modules_to_save" in reasons["embed_tokens.weight"] and "--include-" in reasons["embed_tokens.weight"]

    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key] = torch.cat([tensors[key], tensors[key][:1]])  # one token more: a resized vocabulary
    tensors["base_model.model.new_head.weight"] = torch.randn(3, 48)  # a module BASE does not have
    save_file(tensors, str(file))
    result = analyze(base, adapter, include_embeddings=True, use_cache=False)
    assert all(m.lora_rank is not None for m in result.matrices)
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert "(65, 48)" in reasons["embed_tokens.weight"] and "not comparable" in reasons["embed_tokens.weight"]
    assert "new module" in reasons["new_head.weight"]


@pytest.mark.parametrize(
    ("arch", "targets", "full", "full_weight"),
    [
        ("llama", ["q_proj"], ["embed_tokens"], "embed_tokens.weight"),
        ("gpt2", ["c_attn"], ["h.0.mlp.c_fc"], "h.0.mlp.c_fc.weight"),  # Conv1D: stored (in, out)
    ],
)
@pytest.mark.parametrize("control", ["none", "shrink"])
def test_repair_of_a_weight_saved_whole_equals_the_merged_models_repair(
    tiny_models, tmp_path, arch, targets, full, full_weight, control
):
    """The repaired adapter, merged by peft, equals `repair` of the merged model (a dense fine-tune) in every
    weight: the LoRA modules through their extended factors, the weight saved whole written back whole."""
    from peft import PeftModel
    from transformers import AutoModel

    base = tiny_models[arch]
    adapter, merged = _adapter_with_full_weights(base, tmp_path, targets=targets, full=full,
                                                 fan_in_fan_out=arch == "gpt2")  # fmt: skip
    options = {"lam": 0.5, "control": control, "include_embeddings": True, "use_cache": False}
    result = repair(base, adapter, out=tmp_path / "repaired", **options)
    reference = repair(base, merged, out=tmp_path / "reference", **options)
    name = next(n for n in _by_name(result) if n.endswith(full_weight))
    assert _by_name(result)[name].intruder_ranks == _by_name(reference)[name].intruder_ranks != []
    assert _by_name(result)[name].removed_frobenius > 0 and _by_name(result)[name].rank_added == 0
    assert not any(name == s["name"] for s in result.skipped)

    before = load_file(str(adapter / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "repaired" / "adapter" / "adapter_model.safetensors"))
    key = next(k for k in before if k.endswith(full_weight) and "lora_" not in k)
    assert after[key].shape == before[key].shape and after[key].dtype == before[key].dtype
    assert not torch.equal(before[key], after[key])

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(base)), str(tmp_path / "repaired" / "adapter"))
    repaired = model.merge_and_unload().state_dict()
    expected = load_file(str(tmp_path / "reference" / "model" / "model.safetensors"))
    for k, W in expected.items():
        torch.testing.assert_close(repaired[k], W, rtol=0, atol=2e-5, msg=k)
    if control == "none":  # --merged: the repaired adapter merged by peft into BASE, written as a model
        repair(base, adapter, out=tmp_path / "merged-out", merged=True, **options)
        written = load_file(str(tmp_path / "merged-out" / "model" / "model.safetensors"))
        for k, W in expected.items():
            torch.testing.assert_close(written[k], W, rtol=0, atol=2e-5, msg=k)


def _adapter_with_trainable_tokens(base: Path, out: Path, indices) -> tuple[Path, Path]:
    """peft's trainable tokens (new values for rows ``indices`` of embed_tokens) beside LoRA on q_proj, the rows
    set to random values; and the merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=indices,
                        init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(AutoModel.from_pretrained(str(base)), config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(out / "adapter"))
    peft_model.merge_and_unload().save_pretrained(str(out / "merged"))
    return out / "adapter", out / "merged"


@pytest.mark.parametrize("indices", [[1, 2, 40], {"embed_tokens": [3, 7]}])
def test_trainable_tokens_are_analysed_as_the_merged_model(tiny_models, tmp_path, indices):
    """peft's trainable tokens (trainable_token_indices: a list, or a dict by module): with --include-embeddings
    the table is W₀ with those rows replaced, equal to analysing the merged model; left out, it is named."""
    base = tiny_models["llama"]
    adapter, merged = _adapter_with_trainable_tokens(base, tmp_path, indices)
    found = _by_name(analyze(base, adapter, include_embeddings=True, use_cache=False))
    reference = _by_name(analyze(base, merged, include_embeddings=True, use_cache=False))
    assert found["embed_tokens.weight"].lora_rank is None and found["embed_tokens.weight"].intruders > 0
    for key in found:
        assert found[key].intruder_ranks == reference[key].intruder_ranks, key
        assert found[key].max_abs_cos == pytest.approx(reference[key].max_abs_cos, abs=1e-6), key
        assert found[key].singular_values == pytest.approx(reference[key].singular_values, rel=1e-6), key
    default = analyze(base, adapter, use_cache=False)
    reasons = {s["name"]: s["reason"] for s in default.skipped}
    assert "trainable tokens" in reasons["embed_tokens.weight"] and "--include-embeddings" in reasons["embed_tokens.weight"]
    repaired = repair(base, adapter, lam=0.5, out=tmp_path / "repaired", include_embeddings=True, use_cache=False)
    assert "leaves these rows as they are" in {s["name"]: s["reason"] for s in repaired.skipped}["embed_tokens.weight"]


def test_trainable_tokens_merge_as_peft_merges_them(tiny_models, tmp_path):
    """forgetting/repair-sweep load a tuned model by merging the adapter: trainable tokens included, equal to peft."""
    from transformers import AutoModel

    from intrudim.models.tuned import merge_lora_adapter_

    base = tiny_models["llama"]
    adapter, merged = _adapter_with_trainable_tokens(base, tmp_path, [1, 2, 40])
    ours = AutoModel.from_pretrained(str(base))
    merge_lora_adapter_(ours, adapter)
    reference = AutoModel.from_pretrained(str(merged)).state_dict()
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key
    assert not torch.equal(ours.state_dict()["embed_tokens.weight"], AutoModel.from_pretrained(str(base)).embed_tokens.weight)


def test_other_adapter_tensors_are_listed_not_ignored(tiny_models, tmp_path):
    """A 2-D adapter tensor intrudim does not know (neither LoRA factors, a whole weight nor trainable tokens) is
    named in `skipped`."""
    base = tiny_models["llama"]
    adapter, _ = _adapter_with_full_weights(base, tmp_path, targets=["q_proj"], full=[])
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    tensors["base_model.model.layers.0.self_attn.q_proj.some_new_variant"] = torch.randn(4, 4)
    save_file(tensors, str(file))
    result = analyze(base, adapter, use_cache=False)
    listed = [s for s in result.skipped if "not analysed" in s["reason"]]
    assert [s["name"] for s in listed] == ["base_model.model.layers.0.self_attn.q_proj.some_new_variant"]


def test_bad_trainable_tokens_get_clear_errors(tiny_models, tmp_path):
    """No indices in the config, rows that do not fit the table, tokens for a module BASE lacks: one-paragraph
    errors naming the adapter and what is wrong (analyze and the merge that forgetting uses)."""
    import json

    from transformers import AutoModel

    from intrudim.errors import IntrudimError
    from intrudim.models.tuned import merge_lora_adapter_

    base = tiny_models["llama"]
    adapter, _ = _adapter_with_trainable_tokens(base, tmp_path, [1, 2, 40])
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())

    config_file.write_text(json.dumps({**config, "trainable_token_indices": None}))
    with pytest.raises(IntrudimError, match=r"trainable tokens for 'embed_tokens' but its adapter_config.json gives no list"):
        analyze(base, adapter, include_embeddings=True, use_cache=False)

    config_file.write_text(json.dumps({**config, "trainable_token_indices": [1, 2]}))  # 3 rows stored, 2 indices
    with pytest.raises(IntrudimError, match=r"trainable tokens of 'embed_tokens' have shape \(3, 48\) for 2 token indices"):
        analyze(base, adapter, include_embeddings=True, use_cache=False)

    config_file.write_text(json.dumps(config))
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    key = next(k for k in tensors if "trainable_tokens_delta" in k)
    tensors[key.replace("embed_tokens", "no_such_table")] = tensors.pop(key)
    save_file(tensors, str(file))
    reasons = {s["name"]: s["reason"] for s in analyze(base, adapter, include_embeddings=True, use_cache=False).skipped}
    assert "BASE has no weight 'no_such_table.weight'" in reasons["no_such_table"]
    with pytest.raises(IntrudimError, match=r"has trainable tokens for 'no_such_table', which BASE does not have"):
        merge_lora_adapter_(AutoModel.from_pretrained(str(base)), adapter)
