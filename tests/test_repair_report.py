"""The HTML reports of `repair` and `repair --sweep` (OUT/report.html), as a person sees them: opened in headless
Chromium (tests/browser.py), the tables and the figure rendered, no broken or blank image, no console error; and
what they say: the ranks scaled, the intruders left, the control, λ, k, ε, what was written; for a sweep every
method × λ, the controls explained, the measure with its unit, the text and the task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from browser import check_report, require_browser
from conftest import write_peft_adapter

from intrudim.repair import RepairConfig, repair
from intrudim.repair.sweep import repair_sweep, write_sweep_outputs
from intrudim.repair.sweep_result import RepairSweepResult, SweepPoint

TEXT = ("The river flows past the old mill and the town gathers by the bridge every spring. " * 3 + "\n\n") * 20
TASK_TEXT = ("Review: the film was wonderful. Verdict: positive.\n\nReview: a dull plot. Verdict: negative.\n\n") * 20


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory) -> dict[str, Path]:
    """A tiny random LLaMA causal LM (MiniLM's tokenizer) and a CAUSAL_LM adapter with intruders; two texts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from intrudim.models.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256))  # fmt: skip
    model.save_pretrained(str(root / "base"))
    tokenizer.save_pretrained(str(root / "base"))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, task_type="CAUSAL_LM", init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj", "up_proj"]))  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(root / "adapter"))
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    (root / "task.txt").write_text(TASK_TEXT, encoding="utf-8")
    return {"base": root / "base", "adapter": root / "adapter", "text": root / "text.txt", "task": root / "task.txt"}


def test_repair_report_renders_the_table_and_the_figure(tiny_models, tmp_path):
    require_browser()
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5)
    result = repair(tiny_models["llama"], adapter, k=6, out=tmp_path / "out", use_cache=False)
    assert result.total_intruders > 0 and result.remaining_intruders is not None
    page = check_report(tmp_path / "out" / "report.html", required_selectors=["#verdict", "#summary", "#per-matrix",
                                                                                ".fig img"])  # fmt: skip
    page.assert_ok()
    assert len(page.images) == 1 and "Repair" in page.title
    html = (tmp_path / "out" / "report.html").read_text()
    first = next(m for m in result.matrices if m.scaled_ranks)
    assert ", ".join(f"#{r}" for r in first.scaled_ranks) in html and "intruder ranks scaled" in html
    assert f"{first.sigma_before[0]:.4g} → {first.sigma_after[0]:.4g}" in html
    assert f"<b>{result.remaining_intruders}</b> in {result.matrices_with_remaining_intruders} matrices" in html
    assert "<b>0.75</b>" in html and "top-6" in html and "&lt; 0.5" in html and "<b>none</b>" in html
    assert str(tmp_path / "out" / "adapter") in html and "rank r + |I|" in html

    # a shrink control, and an adapter without intruders (nothing scaled, no figure): both render without problems
    repair(tiny_models["llama"], adapter, k=6, control="shrink", out=tmp_path / "shrink", use_cache=False)
    assert "all of ΔW × c =" in (tmp_path / "shrink" / "report.html").read_text()
    weak = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "weak", r=2, strength=0.001, seed=1)
    repair(tiny_models["bert"], weak, out=tmp_path / "none", use_cache=False)
    page = check_report(tmp_path / "none" / "report.html", required_selectors=["#verdict", "#summary"])
    page.assert_ok()
    assert page.images == () and "No intruder dimensions" in (tmp_path / "none" / "report.html").read_text()


def test_sweep_report_renders_the_figure_the_table_the_controls_and_the_regime(causal_lm, tmp_path):
    require_browser()
    result = repair_sweep(causal_lm["base"], causal_lm["adapter"], (0.0, 0.5), config=RepairConfig(k=4),
                          task="sentiment", text=str(causal_lm["text"]), task_text=str(causal_lm["task"]),
                          max_examples=16, use_cache=False)  # fmt: skip
    paths = write_sweep_outputs(result, tmp_path / "sweep", command="intrudim repair --sweep 0,0.5")
    assert paths["html"] == tmp_path / "sweep" / "report.html"
    page = check_report(paths["html"], required_selectors=["#verdict", "#sweep-figure img", "#sweep-table",
                                                           "#controls", "#regime"])  # fmt: skip
    page.assert_ok()
    assert len(page.images) == 1
    html = paths["html"].read_text()
    for expected in ("intruders", "non-intruder control", "shrink control", "next-token cross-entropy", "nats/token",
                     "perplexity", "lower is better", "lower = less forgetting", "sentiment", str(causal_lm["text"]),
                     str(causal_lm["task"]), "task-text loss", "Δ vs BASE", "BASE (reference)",
                     "intrudim repair --sweep 0,0.5"):  # fmt: skip
        assert expected in html, expected
    assert html.count("<tr") >= len(result.points) + 1  # a row per method × λ
    assert "loss on perplexity" not in html
    data = json.loads(paths["json"].read_text())
    assert data["labels"]["accuracy"].startswith("held-out accuracy on task 'sentiment'")


@pytest.mark.parametrize("measure,unit,exp_name", [("pseudo_loss", "nats/token", "pseudo-perplexity"),
                                                   ("contrastive", "nats/pair", None)])  # fmt: skip
def test_sweep_report_names_the_masked_lm_and_contrastive_measures(tmp_path, measure, unit, exp_name):
    result = RepairSweepResult(base="base", tuned="tuned", task=None, text={"source": "news", "description": "news sample",
                               "licence": "CC BY-SA"}, measure=measure, k=10, epsilon=0.5, total_intruders=4,
                               matrices_with_intruders=2, base_loss=2.0, tokens=512,
                               points=[SweepPoint(0.0, "none", None, 2.2, 1.0), SweepPoint(1.0, "none", None, 2.4, 0.0)])  # fmt: skip
    html = write_sweep_outputs(result, tmp_path)["html"].read_text()
    regime = html[html.index('id="regime"'):]
    assert unit in regime and result.loss.name in regime
    if exp_name is None:
        assert "perplexity" not in regime
    else:
        assert exp_name in regime


@pytest.mark.parametrize("tuned_loss,destructive", [(2.4, False), (2.0 + math.log(80.0), True)])
def test_the_regime_states_the_perplexity_ratio_and_calls_a_ratio_above_two_destructive(tmp_path, tuned_loss,
                                                                                       destructive):  # fmt: skip
    """TUNED perplexity / BASE perplexity on the forgetting text, in the JSON, the terminal and the report; a run
    above 2 no longer models the text and is called destructive (issue: claims across seeds and regimes)."""
    from rich.console import Console

    from intrudim.cli.repair import _print_sweep

    result = RepairSweepResult(base="base", tuned="tuned", task=None, text={"source": "news", "description": "news"},
                               measure="perplexity", k=10, epsilon=0.5, total_intruders=4, matrices_with_intruders=2,
                               base_loss=2.0, tokens=512, points=[SweepPoint(0.0, "none", None, 2.2, 1.0),
                                                                  SweepPoint(1.0, "none", None, tuned_loss, 0.0)])  # fmt: skip
    regime = result.to_json()["regime"]
    assert regime["perplexity_ratio"] == pytest.approx(math.exp(tuned_loss - 2.0))
    assert regime["destructive"] is destructive
    console = Console(width=80, record=True)
    _print_sweep(console, result)
    printed = " ".join(console.export_text().split())
    ratio = f"TUNED perplexity / BASE perplexity = {math.exp(tuned_loss - 2.0):.3g}"
    assert ratio in printed and ("destructive (above 2" in printed) is destructive
    html = write_sweep_outputs(result, tmp_path)["html"].read_text()
    row = html[html.index('id="regime-ratio"'):].split("</tr>")[0]
    assert ("<b>destructive</b>" in row) is destructive and ("not destructive" in row) is (not destructive)
    contrastive = RepairSweepResult(base="b", tuned="t", task=None, text={"source": "news"}, measure="contrastive", k=10,
                                    epsilon=0.5, total_intruders=1, matrices_with_intruders=1, base_loss=0.4,
                                    points=[SweepPoint(1.0, "none", None, 0.5, 0.0)])  # fmt: skip
    assert contrastive.regime() is None  # no perplexity for the contrastive loss: no ratio claimed
