"""intrudim.models: every kind of model reference resolves, and analysis of a model in memory equals the analysis of
the same weights read from files, number for number (LLaMA, BERT, GPT-2's Conv1D)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_peft_adapter
from typer.testing import CliRunner

import intrudim
from intrudim.cli import app
from intrudim.errors import IntrudimError
from intrudim.models.references import resolve_reference, trainer_checkpoints


def _matrices(result) -> list[tuple]:
    return [(m.name, m.intruders, tuple(m.intruder_ranks), tuple(round(c, 9) for c in m.max_abs_cos),
             round(m.intruder_energy_share, 12)) for m in result.matrices]  # fmt: skip


def _peft_model(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModel

    return PeftModel.from_pretrained(AutoModel.from_pretrained(str(base_dir)), str(adapter_dir))


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
def test_peft_model_in_memory_equals_files(tiny_models, tmp_path, arch) -> None:
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", strength=3.0, seed=4)
    from_files = intrudim.analyze(tiny_models[arch], adapter, k=6, use_cache=False)
    assert from_files.total_intruders > 0  # the comparison is not vacuous
    model = _peft_model(tiny_models[arch], adapter)
    alone = intrudim.analyze(model, k=6, use_cache=False)  # W₀ inside each LoRA layer; nothing merged or saved
    with_base = intrudim.analyze(tiny_models[arch], model, k=6, use_cache=False)
    assert _matrices(alone) == _matrices(from_files) == _matrices(with_base)
    assert alone.tuned_kind == "lora" and "PeftModel" in alone.tuned and "in memory" in alone.base


def test_dense_modules_in_memory_equal_files(tiny_models, tmp_path) -> None:
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(tiny_models["llama"]))
    tuned = AutoModel.from_pretrained(str(tiny_models["llama"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "layers.0.self_attn.q_proj" in name:
                u = torch.randn(param.shape[0], 1, generator=generator)
                v = torch.randn(1, param.shape[1], generator=generator)
                param.add_(5.0 * u @ v / (u.norm() * v.norm()))
    tuned.save_pretrained(str(tmp_path / "tuned"))
    from_files = intrudim.analyze(tiny_models["llama"], tmp_path / "tuned", k=6, use_cache=False)
    in_memory = intrudim.analyze(base, tuned, k=6, use_cache=False)
    assert _matrices(in_memory) == _matrices(from_files)
    changed = next(m for m in in_memory.matrices if "layers.0.self_attn.q_proj" in m.name)
    assert changed.intruders >= 1 and in_memory.tuned_kind == "dense"


def test_in_memory_weights_use_the_base_svd_cache(tiny_models, tmp_path) -> None:
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", seed=1)
    cache = tmp_path / "cache"
    cold = intrudim.analyze(tiny_models["llama"], adapter, k=6, cache_dir=cache)
    warm = intrudim.analyze(_peft_model(tiny_models["llama"], adapter), k=6, cache_dir=cache)
    assert cold.cache_misses > 0 and warm.cache_misses == 0 and warm.cache_hits == cold.cache_misses
    warm_files = intrudim.analyze(tiny_models["llama"], adapter, k=6, cache_dir=cache)
    assert _matrices(warm) == _matrices(warm_files)  # the same float32 factors read from the cache


def test_named_adapter_of_a_peft_model(tiny_models, tmp_path) -> None:
    first = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", seed=1, strength=3.0)
    second = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "b", seed=2, strength=3.0)
    model = _peft_model(tiny_models["llama"], first)
    model.load_adapter(str(second), adapter_name="other")
    assert model.active_adapter == "default"
    other = intrudim.analyze(model, adapter_name="other", k=6, use_cache=False)
    assert _matrices(other) == _matrices(intrudim.analyze(tiny_models["llama"], second, k=6, use_cache=False))
    with pytest.raises(IntrudimError, match="no adapter 'missing'.*default, other"):
        intrudim.analyze(model, adapter_name="missing")


def test_adapter_alone_uses_its_recorded_base(tiny_models, tmp_path) -> None:
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", seed=3, strength=3.0)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_models["llama"])  # peft records the folder it loaded
    alone = intrudim.analyze(adapter, k=6, use_cache=False)
    assert _matrices(alone) == _matrices(intrudim.analyze(tiny_models["llama"], adapter, k=6, use_cache=False))
    assert str(tiny_models["llama"]) in alone.base
    result = CliRunner().invoke(app, ["analyze", str(adapter), "--k", "6", "--no-cache", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_intruders"] == alone.total_intruders

    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["analyze", str(adapter)])
    assert result.exit_code == 2 and "records none" in result.output and "Traceback" not in result.output


def test_adapter_given_as_base_says_the_order(tiny_models, tmp_path) -> None:
    """Every verb that takes BASE TUNED: an adapter given first is named as an adapter, with the right order, and
    the message names no other verb's command."""
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", seed=3)
    base = str(tiny_models["llama"])
    for verb, extra in (("analyze", []), ("forgetting", ["--max-tokens", "64"]), ("repair", ["--out", str(tmp_path / "r")]),
                        ("scan", ["--out", str(tmp_path / "s")])):  # fmt: skip
        result = CliRunner().invoke(app, [verb, str(adapter), base, *extra])
        assert result.exit_code == 2, (verb, result.output)
        text = " ".join(result.output.split())
        assert f"'{adapter}' is a PEFT adapter (it holds adapter_config.json), not a model" in text, (verb, text)
        assert "Give the base model first and the adapter second (BASE ADAPTER)" in text, (verb, text)
        assert "intrudim analyze" not in text and "Traceback" not in text, (verb, text)


def _trainer_output(tmp_path: Path, base_dir: Path, steps: list[int]) -> Path:
    """A Trainer output_dir as Trainer writes it: checkpoint-N folders, each with its trainer_state.json."""
    out = tmp_path / "output"
    for i, step in enumerate(steps):
        checkpoint = write_peft_adapter(base_dir, "llama", out / f"checkpoint-{step}", seed=10 + i, strength=3.0)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return out


def test_trainer_output_dir_and_checkpoints(tiny_models, tmp_path) -> None:
    out = _trainer_output(tmp_path, tiny_models["llama"], [5, 10, 40])
    assert [step for step, _ in trainer_checkpoints(out)] == [5, 10, 40]  # by step, not by name
    reference = resolve_reference(str(out), role="tuned")
    assert reference.kind == "trainer-output" and reference.path == out / "checkpoint-40"
    assert "latest checkpoint, checkpoint-40 (step 40)" in reference.describe()
    latest = intrudim.analyze(tiny_models["llama"], out, k=6, use_cache=False)
    assert _matrices(latest) == _matrices(intrudim.analyze(tiny_models["llama"], out / "checkpoint-40", k=6,
                                                           use_cache=False))  # fmt: skip
    assert resolve_reference(str(out / "checkpoint-5")).kind == "checkpoint"
    # A model saved into output_dir itself (trainer.save_model()) is what output_dir means.
    shutil.copytree(out / "checkpoint-5", out, dirs_exist_ok=True)
    assert resolve_reference(str(out)).path == out


def test_run_dir_resolves_to_final(tiny_models, tmp_path) -> None:
    run = tmp_path / "run"
    write_peft_adapter(tiny_models["llama"], "llama", run / "final", seed=1)
    (run / "metrics.jsonl").write_text("")
    reference = resolve_reference(str(run))
    assert reference.kind == "run" and reference.path == run / "final"


def test_embedded_name_and_local_folder_win_over_hub_ids(tmp_path, monkeypatch) -> None:
    assert resolve_reference("minilm").kind == "embedded"
    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(resolve_reference("minilm").path), tmp_path / "org" / "name")
    reference = resolve_reference("org/name")  # also a valid Hub id: the local folder is meant
    assert reference.kind == "folder" and reference.path == Path("org/name")


def test_unknown_reference_lists_every_form(tmp_path) -> None:
    with pytest.raises(IntrudimError, match="not a local path, an embedded model or a Hub repo id") as error:
        resolve_reference(str(tmp_path / "nothing" / "here"), role="tuned")
    assert "Trainer output_dir" in str(error.value) and "org/name@revision" in str(error.value)
    with pytest.raises(IntrudimError, match="got a int"):
        resolve_reference(3)


def test_scan_of_a_trainer_output_dir_orders_checkpoints_by_step(tiny_models, tmp_path) -> None:
    from intrudim.analysis.config import AnalyzeConfig
    from intrudim.scan.config import ScanConfig
    from intrudim.scan.running import scan

    out = _trainer_output(tmp_path, tiny_models["llama"], [5, 10, 40])
    result = scan(str(tiny_models["llama"]), [str(out)], tmp_path / "scan",
                  ScanConfig(analysis=AnalyzeConfig(k=6)), cache_dir=tmp_path / "cache")  # fmt: skip
    rows = result.document["rows"]
    assert [r["name"] for r in rows] == ["checkpoint-5", "checkpoint-10", "checkpoint-40"]
    assert [r["step"] for r in rows] == [5, 10, 40]
    steps = result.document["steps"]
    for row, step in zip(rows, steps, strict=True):
        expected = intrudim.analyze(tiny_models["llama"], out / row["name"], k=6, cache_dir=tmp_path / "cache")
        assert step["step"] == row["step"] and step["total_intruders"] == expected.total_intruders == row["total_intruders"]
    assert (tmp_path / "scan" / "intruders_over_steps.png").stat().st_size > 1000
    html = (tmp_path / "scan" / "leaderboard.html").read_text()
    assert 'id="steps-figure"' in html and "Intruders over training steps" in html
    assert "3 of the 3 scanned inputs are <code>checkpoint-N</code>" in html and "The other inputs" not in html
    assert "step" in (tmp_path / "scan" / "leaderboard.csv").read_text().splitlines()[0]
    other = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "other" / "adapter", seed=9)
    mixed = scan(str(tiny_models["llama"]), [str(out), str(other)], tmp_path / "mixed",
                 ScanConfig(analysis=AnalyzeConfig(k=6), figures="none"), cache_dir=tmp_path / "cache")  # fmt: skip
    html = (tmp_path / "mixed" / "leaderboard.html").read_text()  # what the note says is what the scan held
    assert len(mixed.document["rows"]) == 4 and "3 of the 4 scanned inputs" in html and "The other inputs" in html


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repair_of_a_peft_model_in_memory_equals_the_written_repair(tiny_models, tmp_path, arch) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", strength=3.0, seed=4)
    written = intrudim.repair(tiny_models[arch], adapter, lam=0.5, k=6, out=tmp_path / "out", use_cache=False)
    assert written.total_intruders > 0 and not written.unchanged
    model = _peft_model(tiny_models[arch], adapter)
    result = intrudim.repair(model, lam=0.5, k=6, use_cache=False)
    assert result.total_intruders == written.total_intruders and "'repaired'" in result.output
    assert model.active_adapter == "default" and set(model.peft_config) == {"default", "repaired"}
    on_disk = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    in_memory = get_peft_model_state_dict(model, adapter_name="repaired")
    assert set(in_memory) == set(on_disk)
    for key, value in on_disk.items():
        assert torch.equal(in_memory[key].cpu(), value), key
    assert model.peft_config["repaired"].rank_pattern == json.loads(
        (tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["rank_pattern"]  # fmt: skip
    model.save_pretrained(str(tmp_path / "saved"), selected_adapters=["repaired"])
    saved = load_file(str(tmp_path / "saved" / "repaired" / "adapter_model.safetensors"))
    assert all(torch.equal(saved[key], on_disk[key]) for key in on_disk) and set(saved) == set(on_disk)
    # The repaired adapter analysed in memory has fewer intruders at λ = 0.5 than the original (scaled σ).
    assert intrudim.analyze(model, adapter_name="repaired", k=6, use_cache=False).total_intruders <= written.total_intruders
    with pytest.raises(IntrudimError, match="already has an adapter named 'repaired'"):
        intrudim.repair(model, lam=0.5, k=6, use_cache=False)


def test_a_mistyped_local_path_is_said_to_be_missing_before_it_is_read_as_a_hub_id(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["analyze", "smollm2", "adapters/r9"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, text
    assert f"No file or folder 'adapters/r9' exists in {tmp_path} (check the path); read as a Hub repo id, the Hub " \
           f"repo 'adapters/r9'" in text, text
