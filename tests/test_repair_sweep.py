"""`repair --sweep`: the in-memory repair of every (λ, method) equals the repaired adapter written by `repair`
and measured from disk (forgetting and task accuracy); CLI outputs and bad input through the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_saved_weights_

from intrudim.errors import IntrudimError
from intrudim.experiments.repair_sweep import parse_controls, parse_lambdas, repair_sweep
from intrudim.repair import RepairConfig, repair

HIDDEN = 32
TEXT = ("The river flows past the old mill and the town gathers by the bridge every spring. " * 3 + "\n\n") * 20


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> dict[str, Path]:
    """A tiny random LLaMA causal LM (MiniLM's tokenizer) and a PEFT CAUSAL_LM adapter with strong intruders."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from intrudim.models.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(root / "base"))
    tokenizer.save_pretrained(str(root / "base"))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, task_type="CAUSAL_LM", init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(root / "adapter"))
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return {"base": root / "base", "adapter": root / "adapter", "text": root / "text.txt"}


def test_parsing():
    assert parse_lambdas("1, 0,0.5,0.5") == (0.0, 0.5, 1.0)
    for bad in ("1,x", "", "0,-1", "0,,1"):
        with pytest.raises(IntrudimError, match="--sweep"):
            parse_lambdas(bad)
    assert parse_controls("all") == ("none", "non-intruder", "shrink")
    assert parse_controls("shrink") == ("none", "shrink")
    with pytest.raises(IntrudimError, match="--control"):
        parse_controls("random")


def test_sweep_equals_written_repairs_measured_from_disk(lm, tmp_path):
    from intrudim.evaluate.accuracy import accuracy
    from intrudim.evaluate.forgetting import ForgettingConfig, ForgettingProbe
    from intrudim.experiments.repair_sweep import _task_model

    config = RepairConfig(k=4)
    result = repair_sweep(lm["base"], lm["adapter"], (0.0, 0.5), config=config, task="sentiment", text=str(lm["text"]),
                          max_examples=64, use_cache=False)  # fmt: skip
    assert result.total_intruders > 0
    assert {(p.method, p.lam) for p in result.points} == {(m, lam) for m in ("none", "non-intruder", "shrink")
                                                         for lam in (0.0, 0.5, 1.0)}  # fmt: skip
    probe = ForgettingProbe.prepare(lm["base"], str(lm["text"]), ForgettingConfig())
    assert result.base_loss == pytest.approx(float(probe.losses(probe.load_base_model()).mean()), rel=1e-6)
    for method in ("none", "non-intruder", "shrink"):
        for lam in (0.0, 1.0):
            out = tmp_path / f"{method}-{lam}"
            repair(lm["base"], lm["adapter"], RepairConfig(k=4, lam=lam, control=method), out=out, use_cache=False)
            written = out / "adapter"
            model, _ = probe.load_tuned_model(written)
            point = result.point(lam, method)
            assert point.forgetting_loss == pytest.approx(float(probe.losses(model).mean()), rel=1e-5), (method, lam)
            task_model, tokenizer, task, fmt = _task_model(lm["base"], written, "sentiment", 0)
            acc = accuracy(task_model, tokenizer, task.validation[:64], task.kind, prompt_format=fmt)
            assert point.accuracy == pytest.approx(acc, abs=1e-9), (method, lam)
    # removing the intruders entirely moves the model: the sweep can tell the methods apart
    assert result.point(0.0, "none").forgetting_loss != result.point(1.0, "none").forgetting_loss
    assert result.point(0.0, "non-intruder").removed_frobenius > 0


def test_sweep_repairs_a_weight_saved_whole_as_the_written_repair(lm, tmp_path):
    """An adapter that saved a down_proj whole (modules_to_save) beside LoRA: the sweep's in-memory repair of it
    equals the repaired adapter `repair` writes, measured from disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from intrudim.evaluate.forgetting import ForgettingConfig, ForgettingProbe

    peft_model = get_peft_model(
        LlamaForCausalLM.from_pretrained(str(lm["base"])),
        LoraConfig(r=2, lora_alpha=4, task_type="CAUSAL_LM", init_lora_weights=False, target_modules=["q_proj"],
                   modules_to_save=["layers.0.mlp.down_proj"]),
    )  # fmt: skip
    train_saved_weights_(peft_model, seed=2)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    config = RepairConfig(k=4)
    result = repair_sweep(lm["base"], adapter, (0.0,), ("none",), config=config, text=str(lm["text"]), use_cache=False)
    written = repair(lm["base"], adapter, RepairConfig(k=4, lam=0.0), out=tmp_path / "repaired", use_cache=False)
    whole = next(m for m in written.matrices if m.name.endswith("layers.0.mlp.down_proj.weight"))
    assert whole.intruder_ranks and whole.removed_frobenius > 0
    probe = ForgettingProbe.prepare(lm["base"], str(lm["text"]), ForgettingConfig())
    model, _ = probe.load_tuned_model(tmp_path / "repaired" / "adapter")
    loss = float(probe.losses(model).mean())
    assert result.point(0.0, "none").forgetting_loss == pytest.approx(loss, rel=1e-5)
    assert result.point(0.0, "none").forgetting_loss != result.point(1.0, "none").forgetting_loss


def _script() -> str:
    script = Path(sys.executable).parent / "intrudim"
    if not script.exists():
        pytest.skip("the intrudim script is not installed in this environment")
    return str(script)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "80"}
    return subprocess.run([_script(), *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_repair_and_sweep(lm, tmp_path):
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "r"), "--k", "4",
                "--lambda", "0.5", "--cache", str(tmp_path / "cache"), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["lambda"] == 0.5 and data["total_intruders"] > 0 and data["output_kind"] == "adapter"
    assert (tmp_path / "r" / "adapter" / "adapter_config.json").exists()
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "s"), "--k", "4",
                "--sweep", "0,1", "--control", "all", "--text", str(lm["text"]), "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("repair_sweep.json", "repair_sweep.csv", "repair_sweep.png"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    assert "shrink control" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


@pytest.mark.parametrize("args,message", [
    (["--lambda", "-1"], "lambda must be a finite number"),
    (["--sweep", "0,x", "--text", "news"], "--sweep must be a comma-separated list"),
    (["--sweep", "0,1", "--task", "no-such-task"], "no-such-task"),
    (["--sweep", "0,1"], "at least one"),
    (["--control", "all"], "needs --sweep"),
])  # fmt: skip
def test_cli_bad_input(lm, tmp_path, args, message):
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "adapter").exists()
