"""Bad input gets one clear paragraph naming the file/key/shape — never a deep traceback — and nothing is lost."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import tiny_bert, write_peft_adapter
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.cli import app
from intrudim.errors import (
    CorruptFileError,
    IncompatibleWeightsError,
    InputNotFoundError,
    IntrudimError,
    InvalidConfigError,
    NonFiniteWeightsError,
    PickleRefusedError,
)
from intrudim.fileio import write_text_atomic

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_missing_path(tiny_models, tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        analyze(tmp_path / "nope", tiny_models["bert"])
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(tmp_path / "missing_adapter")),
                       "missing_adapter", "does not exist")  # fmt: skip


def test_adapter_for_another_architecture(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2)
    with pytest.raises(IncompatibleWeightsError, match="layers.0.mlp.down_proj") as info:
        analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c")
    assert str(tiny_models["bert"]) in str(info.value)


def test_adapter_with_mismatching_shapes_names_key_and_both_shapes(tiny_models, tmp_path):
    from transformers import BertConfig, BertModel

    wider = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=32))  # fmt: skip
    wider.save_pretrained(str(tmp_path / "other_bert"))
    adapter = write_peft_adapter(tmp_path / "other_bert", "bert", tmp_path / "a", r=2)
    with pytest.raises(IncompatibleWeightsError) as info:
        analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "encoder.layer.0.attention.output.dense" in message
    assert "(32, 32)" in message and "(48, 48)" in message


def test_dense_tuned_with_different_architecture(tiny_models, tmp_path):
    with pytest.raises(IncompatibleWeightsError, match="'llama' model but BASE"):
        analyze(tiny_models["bert"], tiny_models["llama"], cache_dir=tmp_path / "c")
    # Same model type, different shapes: the first mismatching key and both shapes are named.
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=32)).save_pretrained(str(tmp_path / "b32"))  # fmt: skip
    with pytest.raises(IncompatibleWeightsError, match=r"Shape mismatch for 'encoder.layer.0.attention.output.dense.weight'.*\(48, 48\).*\(32, 32\)"):
        analyze(tiny_models["bert"], tmp_path / "b32", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("where", ["base", "tuned", "adapter"])
def test_non_finite_weights_name_the_matrix(tiny_models, tmp_path, where):
    bad_key = "encoder.layer.1.intermediate.dense.weight"
    base_dir = tiny_models["bert"]
    tuned = tmp_path / "tuned"
    tiny_bert().save_pretrained(str(tuned))
    if where == "base":
        state = load_file(str(base_dir / "model.safetensors"))
        state[bad_key][0, 0] = float("nan")
        base_dir = tmp_path / "base"
        base_dir.mkdir()
        save_file(state, str(base_dir / "model.safetensors"))
        (base_dir / "config.json").write_text((tiny_models["bert"] / "config.json").read_text())
    elif where == "tuned":
        state = load_file(str(tuned / "model.safetensors"))
        state[bad_key][3, 2] = float("inf")
        save_file(state, str(tuned / "model.safetensors"))
    else:
        tuned = write_peft_adapter(base_dir, "bert", tmp_path / "adapter", r=2)
        state = load_file(str(tuned / "adapter_model.safetensors"))
        key = next(k for k in state if "layer.1.intermediate.dense.lora_B" in k)
        state[key][0, 0] = float("nan")
        save_file(state, str(tuned / "adapter_model.safetensors"))
        bad_key = "encoder.layer.1.intermediate.dense.lora_B"
    with pytest.raises(NonFiniteWeightsError, match=bad_key.replace(".", r"\.")):
        analyze(base_dir, tuned, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(tiny_models, tmp_path, damage):
    target = tmp_path / "broken"
    target.mkdir()
    data = (tiny_models["bert"] / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        analyze(tiny_models["bert"], target, cache_dir=tmp_path / "c")
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(target), "--cache", str(tmp_path / "c")),
                       "truncated or corrupt")  # fmt: skip


def test_pickle_checkpoint_refused_unless_allowed(tiny_models, tmp_path):
    state = load_file(str(tiny_models["bert"] / "model.safetensors"))
    pickled = tmp_path / "pt_model"
    pickled.mkdir()
    torch.save(state, str(pickled / "pytorch_model.bin"))
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        analyze(tiny_models["bert"], pickled, cache_dir=tmp_path / "c")
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(pickled / "pytorch_model.bin")), "pickle", "--allow-pickle")
    result = analyze(tiny_models["bert"], pickled, cache_dir=tmp_path / "c", allow_pickle=True)
    assert result.total_intruders == 0 and len(result.matrices) == 12


def test_k_larger_than_matrix(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    with pytest.raises(InvalidConfigError, match=r"k=49 is larger than matrix 'encoder.layer.0.*48"):
        analyze(tiny_models["bert"], adapter, AnalyzeConfig(k=49), cache_dir=tmp_path / "c")
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(adapter), "--k", "49"), "--k 48 or less")


@pytest.mark.parametrize("epsilon", ["0", "-0.1", "1.5"])
def test_epsilon_out_of_range(tiny_models, tmp_path, epsilon):
    with pytest.raises(InvalidConfigError, match="epsilon must be in"):
        AnalyzeConfig(epsilon=float(epsilon))
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(tiny_models["bert"]), "--epsilon", epsilon),
                       "epsilon must be in (0, 1]")  # fmt: skip


def test_bad_config_values():
    for kwargs in ({"k": 0}, {"k": -3}, {"method": "fast"}, {"cache_dtype": "float8"}, {"modules": "("},
                   {"device": "tpu"}, {"epsilons": (0.5, 2.0)}):  # fmt: skip
        with pytest.raises(InvalidConfigError):
            AnalyzeConfig(**kwargs)


def test_unwritable_out_directory_runs_as_root_too(tiny_models, tmp_path):
    """A read-only parent refuses a non-root user; root writes anywhere, so for root (CI) the parent is a regular
    file, which nobody can create a directory under. Either way: one message, exit 2, before any work."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target = locked / "x"
    else:
        (tmp_path / "plain_file").write_text("")
        target = tmp_path / "plain_file" / "x"
    assert_clean_error(cli("analyze", str(tiny_models["bert"]), str(tiny_models["bert"]), "--out", str(target)),
                       "Cannot write")  # fmt: skip


def test_unwritable_out_directory(tiny_models, tmp_path):
    """An --out that is an existing file cannot be a directory (works as root, too): refused before any work."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    result = cli("analyze", str(tiny_models["bert"]), str(tiny_models["bert"]), "--out", str(blocker / "sub"))
    assert_clean_error(result, "Cannot write to --out directory")
    assert blocker.read_text() == "keep me"


def test_no_matching_modules(tiny_models, tmp_path):
    with pytest.raises(IntrudimError, match="No matrices to analyse"):
        analyze(tiny_models["bert"], tiny_models["bert"], cache_dir=tmp_path / "c", modules="nothing_matches_this")


def test_interrupted_cache_write_leaves_no_entry(tiny_models, tmp_path, monkeypatch):
    import intrudim.weights.svd_cache as svd_cache

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(svd_cache, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        analyze(tiny_models["bert"], tiny_models["bert"], cache_dir=tmp_path / "cache")
    # no factors and no temporary file; the memo of keys (whole JSON records, written atomically) may stay
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != "keys"]
    for record in (tmp_path / "cache" / "keys").glob("*"):
        assert record.suffix == ".json" and json.loads(record.read_text())["keys"]


def test_interrupted_report_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_text_atomic(target, "previous report")

    class Boom(Exception):
        pass

    import intrudim.fileio as fileio

    real_replace = os.replace

    def failing_replace(src, dst):
        raise Boom

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(Boom):
        write_text_atomic(target, "new report, half written")
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert target.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_adapter_missing_weights_file(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="adapter_model.safetensors"):
        analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c")


def test_dora_adapter_is_refused_with_advice(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(IntrudimError, match="merge_and_unload"):
        analyze(tiny_models["bert"], adapter, cache_dir=tmp_path / "c")


def test_sharded_model_with_a_missing_shard(tiny_models, tmp_path):
    from transformers import AutoModel

    AutoModel.from_pretrained(str(tiny_models["llama"])).save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(InputNotFoundError, match=shard.name):
        analyze(tmp_path / "sharded", tiny_models["llama"], use_cache=False)


def test_finite_check_tells_nan_from_a_half_precision_sum_that_overflows() -> None:
    """The check sums in the matrix's own dtype first: an fp16 sum of large finite values overflows to inf, which
    must not be taken for damaged weights; a real NaN or Inf must still be found, in any dtype."""
    import torch

    from intrudim.analysis.planning import check_finite

    check_finite(torch.full((300, 300), 60000.0, dtype=torch.float16), "big", "BASE 'x'")  # sum overflows fp16
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for bad in (float("nan"), float("inf"), float("-inf")):
            W = torch.ones(40, 30, dtype=dtype)
            W[7, 3] = bad
            with pytest.raises(NonFiniteWeightsError, match="holds 1 NaN/Inf"):
                check_finite(W, "m", "BASE 'x'")
