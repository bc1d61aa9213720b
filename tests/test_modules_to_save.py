"""Weights a LoRA adapter trained fully and saved whole (PEFT's ``modules_to_save``, e.g. a fully trained
embedding table next to LoRA on the attention): `analyze` compares them with BASE as a dense fine-tune (W_t is the
saved weight) and equals the analysis of the merged model; left out, they are listed with the reason; a weight BASE
lacks or of another shape is listed, never compared; `repair` leaves them as they are and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name and param.ndim == 2:
                param.add_(3.0 * param.std() * torch.randn(param.shape, generator=generator))
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


def test_repair_leaves_a_weight_saved_whole_as_it_is_and_says_so(tiny_models, tmp_path):
    base = tiny_models["llama"]
    adapter, _ = _adapter_with_full_weights(base, tmp_path, targets=["q_proj"], full=["embed_tokens"])
    result = repair(base, adapter, lam=0.5, out=tmp_path / "repaired", include_embeddings=True, use_cache=False)
    assert {m.name for m in result.matrices} == {"layers.0.self_attn.q_proj.weight", "layers.1.self_attn.q_proj.weight"}
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert "leaves this weight as it is" in reasons["embed_tokens.weight"]
    before = load_file(str(adapter / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "repaired" / "adapter" / "adapter_model.safetensors"))
    key = next(k for k in before if k.endswith("embed_tokens.weight"))
    assert torch.equal(before[key], after[key])


def test_other_adapter_tensors_are_listed_not_ignored(tiny_models, tmp_path):
    """peft's trainable tokens (a (n, dim) delta for chosen token rows, no .weight): named in `skipped`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = tiny_models["llama"]
    model = AutoModel.from_pretrained(str(base))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    get_peft_model(model, config).save_pretrained(str(tmp_path / "adapter"))
    result = analyze(base, tmp_path / "adapter", use_cache=False)
    listed = [s for s in result.skipped if "trainable tokens" in s["reason"]]
    assert len(listed) == 1 and "trainable_tokens_delta" in listed[0]["name"], result.skipped
