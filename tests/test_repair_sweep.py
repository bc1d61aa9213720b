"""`repair --sweep`: the in-memory repair of every (λ, method) equals the repaired adapter written by `repair`
and measured from disk (forgetting, task accuracy, the loss on the user's own --task-text); every measure named with
its unit (causal LM, masked LM, contrastive); CLI outputs at 80 columns, plain progress lines without a terminal, and
bad input through the installed script."""

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
from intrudim.repair import RepairConfig, repair
from intrudim.repair.sweep import repair_sweep, write_sweep_outputs
from intrudim.repair.sweep_result import parse_controls, parse_lambdas

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
    from intrudim.evaluate.forgetting import ForgettingProbe
    from intrudim.evaluate.forgetting_config import ForgettingConfig
    from intrudim.repair.sweep import _task_model

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

    from intrudim.evaluate.forgetting import ForgettingProbe
    from intrudim.evaluate.forgetting_config import ForgettingConfig

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


TASK_TEXT = ("Review: the film was wonderful and the acting was superb. Verdict: positive.\n\n"
             "Review: a dull plot and wooden dialogue throughout. Verdict: negative.\n\n") * 15


def test_task_text_is_the_forgetting_loss_of_the_users_own_text(lm, tmp_path):
    """--task-text: the task cost measured on the user's own held-out text, with forgetting's definition and code
    (ForgettingProbe.prepare + probe.losses): equal to that loss of each repair written by `repair` and read from
    disk; BASE's loss on it for reference; lower is better."""
    from intrudim.evaluate.forgetting import ForgettingProbe
    from intrudim.evaluate.forgetting_config import ForgettingConfig

    task_file = tmp_path / "held_out.txt"
    task_file.write_text(TASK_TEXT, encoding="utf-8")
    result = repair_sweep(lm["base"], lm["adapter"], (0.0,), ("none", "shrink"), config=RepairConfig(k=4),
                          task_text=str(task_file), use_cache=False)  # fmt: skip
    assert result.task is None and result.text is None and result.task_text["source"] == str(task_file)
    assert all(p.forgetting_loss is None and p.accuracy is None for p in result.points)
    probe = ForgettingProbe.prepare(lm["base"], str(task_file), ForgettingConfig())
    assert result.task_tokens == probe.tokens and result.measure == "perplexity"
    assert result.base_task_loss == pytest.approx(float(probe.losses(probe.load_base_model()).mean()), rel=1e-6)
    for method, lam in (("none", 0.0), ("shrink", 0.0), ("none", 1.0)):
        out = tmp_path / f"{method}-{lam}"
        repair(lm["base"], lm["adapter"], RepairConfig(k=4, lam=lam, control=method), out=out, use_cache=False)
        model, _ = probe.load_tuned_model(out / "adapter")
        expected = float(probe.losses(model).mean())
        assert result.point(lam, method).task_loss == pytest.approx(expected, rel=1e-5), (method, lam)
    assert result.tuned_task_loss == result.point(1.0, "none").task_loss
    assert result.point(0.0, "none").task_loss != result.point(1.0, "none").task_loss
    data = result.to_json()
    assert data["base_task_loss"] == result.base_task_loss and data["points"][0]["task_loss"] is not None
    assert "lower is better" in data["labels"]["task_loss"] and "nats/token" in data["labels"]["task_loss"]
    paths = write_sweep_outputs(result, tmp_path / "outputs")
    assert "task_loss" in paths["csv"].read_text().splitlines()[0]
    html = paths["html"].read_text()
    assert "task-text loss" in html and "lower is better" in html and str(task_file) in html


def test_masked_lm_sweep_reports_the_pseudo_loss(tmp_path):
    """A masked LM's forgetting measure is the MLM pseudo-loss (nats/token, pseudo-perplexity): the sweep says so in
    its JSON, its table and its figure, not 'perplexity'."""
    from peft import LoraConfig, get_peft_model
    from rich.console import Console
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from intrudim.cli.repair import _print_sweep
    from intrudim.models.embedded import embedded_model_path
    from intrudim.report.repair_figures import sweep_panels

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=160))  # fmt: skip
    model.save_pretrained(str(tmp_path / "base"))
    tokenizer.save_pretrained(str(tmp_path / "base"))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                                  target_modules=["query", "value"]))  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    result = repair_sweep(tmp_path / "base", tmp_path / "adapter", (0.0,), ("none",), config=RepairConfig(k=4),
                          text=str(tmp_path / "text.txt"), max_tokens=256, use_cache=False)  # fmt: skip
    assert result.measure == "pseudo_loss" and result.total_intruders > 0
    data = result.to_json()
    assert data["loss_unit"] == "nats/token" and "pseudo-loss" in data["loss_name"]
    assert "pseudo-loss" in data["labels"]["forgetting_loss"]
    assert sweep_panels(result)[0][1].startswith("MLM pseudo-loss")
    console = Console(width=80, record=True)
    _print_sweep(console, result)
    text = " ".join(console.export_text().split())
    assert "BASE loss on the text:" in text and "nats/token (MLM pseudo-loss" in text and "pseudo-perplexity" in text


def test_contrastive_measure_is_named_in_nats_per_pair_without_a_perplexity():
    """A sentence encoder's forgetting loss is the in-batch contrastive loss per sentence pair: no perplexity."""
    from rich.console import Console

    from intrudim.cli.repair import _print_sweep
    from intrudim.repair.sweep_result import RepairSweepResult, SweepPoint
    from intrudim.report.repair_figures import sweep_panels

    result = RepairSweepResult(base="minilm", tuned="run", task=None, text={"source": "news"}, measure="contrastive",
                               k=10, epsilon=0.5, total_intruders=3, matrices_with_intruders=2, base_loss=0.41,
                               points=[SweepPoint(0.0, "none", None, 0.45, 1.0), SweepPoint(1.0, "none", None, 0.5, 0.0)])  # fmt: skip
    assert result.loss.describe(0.41) == "0.4100 nats/pair (in-batch contrastive loss of adjacent-sentence pairs)"
    assert "nats/pair" in result.to_json()["labels"]["forgetting_loss"]
    assert sweep_panels(result)[0][1].startswith("in-batch contrastive loss of adjacent-sentence pairs (nats/pair)")
    console = Console(width=80, record=True)
    _print_sweep(console, result)
    printed = console.export_text()
    assert "perplexity" not in printed and "nats/pair" in printed


def test_sweep_refuses_to_replace_another_runs_report(lm, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.html").write_text("a repair's report")
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(out), "--sweep", "0", "--text",
                str(lm["text"]), "--k", "4", "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 2 and "already exists" in " ".join(proc.stderr.split()), proc.stderr
    assert (out / "report.html").read_text() == "a repair's report"


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
    assert data["remaining_intruders"] is not None
    assert (tmp_path / "r" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "r" / "report.html").stat().st_size > 0
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "s"), "--k", "4",
                "--sweep", "0,1", "--control", "all", "--text", str(lm["text"]), "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("repair_sweep.json", "repair_sweep.csv", "repair_sweep.png", "report.html"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    assert "shrink control" in proc.stdout and "report.html" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_cli_repair_table_shows_ranks_and_what_is_left_at_80_columns(lm, tmp_path):
    """The ranks scaled read as ranks (#1, #2), not counts; the intruders left are said, per matrix and in total."""
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "r"), "--k", "4",
                "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "r" / "repair.json").read_text())
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, proc.stdout
    header = " ".join(lines[:5])
    assert "intruder " in header and "ranks scaled" in header and "before→after" in header, proc.stdout
    first = next(m for m in saved["matrices"] if m["scaled_ranks"])
    ranks = ", ".join(f"#{r}" for r in first["scaled_ranks"])
    assert any(ranks in line for line in lines), proc.stdout
    assert f"{len(first['intruder_ranks'])} → {len(first['remaining_ranks'])}" in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert f"after the repair: {saved['remaining_intruders']} intruder dimensions remain" in flat, proc.stdout
    assert f"({saved['total_intruders']} before" in flat


def test_cli_prints_plain_progress_lines_when_stderr_is_not_a_terminal(lm, tmp_path):
    """Output to a file or a pipe: no spinner, plain lines for every phase (here stderr is captured: not a tty)."""
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "s"), "--k", "4",
                "--sweep", "0", "--text", str(lm["text"]), "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for expected in ("repair sweep: tokenizing the forgetting text", "repair sweep: planning: 8/8 matrices",
                     "repair sweep: scoring BASE on the text", "repair sweep: 1/2: intruders, λ=0",
                     "repair sweep: 2/2: intruders, λ=1", "repair sweep: done"):  # fmt: skip
        assert any(line.startswith(expected) for line in lines), (expected, proc.stderr)
    assert "\x1b[" not in proc.stderr and "\r" not in proc.stderr  # no terminal control sequences
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "r"), "--k", "4",
                "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for expected in ("repair: 0/8 matrices", "repair: 8/8 matrices", "repair: writing", "repair: done"):
        assert any(line.startswith(expected) for line in proc.stderr.splitlines()), (expected, proc.stderr)


def test_cli_sweep_names_the_measure_and_its_unit(lm, tmp_path):
    """The number printed is a loss (next-token cross-entropy, nats/token), with BASE's perplexity beside it; the
    JSON labels and the figure's axes say the same, and never 'loss on perplexity'."""
    import math

    from intrudim.repair.sweep_result import RepairSweepResult, SweepPoint
    from intrudim.report.repair_figures import sweep_panels

    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "s"), "--k", "4",
                "--sweep", "0", "--text", str(lm["text"]), "--task-text", str(lm["text"]),
                "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "s" / "repair_sweep.json").read_text())
    flat = " ".join(proc.stdout.split())
    assert (f"BASE loss on the text: {data['base_loss']:.4f} nats/token (next-token cross-entropy; perplexity "
            f"{math.exp(data['base_loss']):.4g})") in flat, proc.stdout  # fmt: skip
    assert "BASE loss on the task text:" in flat and "lower is better" in flat
    assert "loss on perplexity" not in proc.stdout and "(perplexity)" not in proc.stdout
    assert data["loss_unit"] == "nats/token" and data["loss_name"] == "next-token cross-entropy"
    assert "nats/token" in data["labels"]["forgetting_loss"] and "lower is better" in data["labels"]["task_loss"]
    result = RepairSweepResult(**{key: data[key] for key in ("base", "tuned", "task", "text", "measure", "k", "epsilon",
                                  "total_intruders", "matrices_with_intruders", "base_loss", "task_text")})  # fmt: skip
    result.points = [SweepPoint(p["lambda"], p["method"], p["accuracy"], p["forgetting_loss"], p["removed_frobenius"],
                                p["task_loss"]) for p in data["points"]]  # fmt: skip
    labels = [label for _, label, _ in sweep_panels(result)]
    assert labels == ["next-token cross-entropy (nats/token)\nlower = less forgetting",
                      "next-token cross-entropy (nats/token)\nlower is better"]  # fmt: skip


@pytest.mark.parametrize("args,message", [
    (["--lambda", "-1"], "lambda must be a finite number"),
    (["--sweep", "0,x", "--text", "news"], "--sweep must be a comma-separated list"),
    (["--sweep", "0,1", "--task", "no-such-task"], "no-such-task"),
    (["--sweep", "0,1"], "at least one"),
    (["--control", "all"], "needs --sweep"),
    (["--top", "-1"], "--top must be 0 or more"),
    (["--sweep", "--control", "all"], "--sweep takes its λ values right after it, e.g. --sweep 0,0.25,0.5,0.75,1"),
    (["--sweep", "0,1", "--task-text", "no/such/file.txt"], "--task-text"),
])  # fmt: skip
def test_cli_bad_input(lm, tmp_path, args, message):
    proc = _run("repair", str(lm["base"]), str(lm["adapter"]), "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "adapter").exists()
