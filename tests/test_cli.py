"""The command line: --json purity, report outputs, toy, and the embedded default end to end."""

from __future__ import annotations

import json

import pytest
from conftest import write_peft_adapter
from typer.testing import CliRunner

from intrudim.cli import app

runner = CliRunner()


def test_analyze_json_prints_only_json(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2)
    result = runner.invoke(app, ["analyze", str(tiny_models["llama"]), str(adapter), "--json",
                                 "--cache", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["k"] == 10 and data["epsilon"] == 0.5
    assert data["total_intruders"] == sum(m["intruders"] for m in data["matrices"])
    assert {m["name"] for m in data["matrices"]} >= {"layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"}


def test_analyze_out_writes_report_files(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["gpt2"], "gpt2", tmp_path / "a", r=2, strength=2.0)
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", str(tiny_models["gpt2"]), str(adapter), "--out", str(out), "--k", "5",
                                 "--epsilon", "0.4", "--k-sweep", "--cache", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "analysis.json").read_text())
    assert data["k"] == 5 and data["epsilon"] == 0.4 and data["k_sweep"]
    rows = (out / "analysis.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(data["matrices"])
    html = (out / "report.html").read_text()
    assert "Intruders vs ε" in html and "data:image/png;base64," in html and "Per matrix" in html
    assert (out / "figures" / "epsilon_sweep.png").stat().st_size > 1000
    assert any(p.name.startswith("similarity_") for p in (out / "figures").iterdir())
    assert not list(out.rglob("*.tmp"))


def test_modules_regex_selects_matrices(tiny_models, tmp_path):
    result = runner.invoke(app, ["analyze", str(tiny_models["bert"]), str(tiny_models["bert"]), "--json",
                                 "--modules", r"attention\.self\.query", "--no-cache"])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = [m["name"] for m in json.loads(result.stdout)["matrices"]]
    assert names == ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"]


def test_toy_json_and_report(tmp_path):
    result = runner.invoke(app, ["toy", "--n", "128", "--trials", "20", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    above = [p for p in data["section5"]["points"] if p["lam_over_sigma_max"] >= 1.25]
    assert above and all(p["intruders"] >= 1 and p["v_rank"] == 1 for p in above)
    assert data["appendix_c"][0]["theory"] > data["appendix_c"][-1]["theory"]
    out = tmp_path / "toy"
    result = runner.invoke(app, ["toy", "--n", "96", "--trials", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "toy.html").exists() and (out / "toy.json").exists()
    assert (out / "figures" / "toy_sweep.png").exists()


def test_toy_bad_values():
    result = runner.invoke(app, ["toy", "--n", "8", "--k", "20"])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_embedded_minilm_planted_adapter_end_to_end(tmp_path):
    """`intrudim analyze minilm <adapter>`: the planted rank-1 intruders are found exactly where planted."""
    from intrudim.experiments.planted import build_planted_adapter

    adapter = build_planted_adapter("minilm", tmp_path / "adapter", rank=1, seed=0)
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", "minilm", str(adapter), "--out", str(out), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "analysis.json").read_text())
    assert len(data["matrices"]) == 36  # 6 layers × (q, k, v, attn-out, MLP in, MLP out)
    for m in data["matrices"]:
        if m["layer"] % 2 == 0:  # strong planted direction: σ = 1.5·σ₁(W₀) → an intruder at rank 1
            assert m["intruder_ranks"] == [1], m["name"]
            assert 1.45 <= m["largest_intruder_sigma_ratio"] <= 1.8  # ≈ 1.5, nudged up by W₀ itself
        else:  # weak direction inside the bulk of the spectrum: no intruder
            assert m["intruders"] == 0, m["name"]
        assert m["effective_rank_delta"] == pytest.approx(1.0, abs=1e-6)
    assert data["total_intruders"] == 18
    assert (out / "report.html").stat().st_size > 50_000


def test_version_names_intrudim_and_the_libraries_its_numbers_depend_on() -> None:
    from importlib.metadata import version

    import intrudim

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"intrudim {version('intrudim')} (torch {version('torch')}, ")
    assert "peft " in result.output and result.output.count("\n") == 1
    assert intrudim.__version__ == version("intrudim")  # the package's constant and its metadata agree


def test_analyze_top_lists_the_matrices_with_most_intruders_and_counts_the_rest(tiny_models, tmp_path):
    """A large model's table is cut to --top rows (most intruders first) plus one line counting the rest; --all
    lists every matrix; every one is in --json whatever is printed."""
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2, strength=2.0)
    args = ["analyze", str(tiny_models["llama"]), str(adapter), "--cache", str(tmp_path / "c")]
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    counts = [m["intruders"] for m in data["matrices"]]
    with_intruders = sum(1 for count in counts if count)
    assert len(counts) == 14 and 3 < with_intruders < 14  # the case: more matrices with intruders than --top

    def table_rows(output: str) -> list[list[str]]:  # "L0 attn.q  48×48  2  1-2 …": label, shape, intr., …
        return [line.split() for line in output.splitlines() if line.strip().startswith("L")]

    top = runner.invoke(app, [*args, "--top", "3"])
    assert top.exit_code == 0, top.output
    assert [int(row[3]) for row in table_rows(top.stdout)] == sorted(counts, reverse=True)[:3]
    assert (f"… and 11 more matrices not listed: {with_intruders - 3} with intruders, {14 - with_intruders} "
            f"without") in top.stdout  # fmt: skip
    assert "every matrix: --all here, or --json" in top.stdout
    assert f"{sum(counts)} intruder dimensions (k=10, ε=0.5) in {with_intruders} of 14 matrices" in top.stdout
    everything = runner.invoke(app, [*args, "--all", "--top", "3"])
    assert [int(row[3]) for row in table_rows(everything.stdout)] == counts  # the model's order
    assert "not listed" not in everything.stdout
    default = runner.invoke(app, args)  # 14 matrices: fewer than the default --top, so all of them
    assert len(table_rows(default.stdout)) == 14 and "not listed" not in default.stdout
    negative = runner.invoke(app, [*args, "--top", "-1"])
    assert negative.exit_code == 2 and "--top must be 0 or more" in negative.output


def test_matrices_to_print_orders_by_intruders_then_the_models_order():
    from types import SimpleNamespace

    from intrudim.cli.analyze import matrices_to_print, unlisted_lines

    matrices = [SimpleNamespace(name=f"m{i}", intruders=n) for i, n in enumerate([0, 2, 5, 0, 2, 1])]
    assert [m.name for m in matrices_to_print(matrices, 3)] == ["m2", "m1", "m4"]  # ties (2, 2) in model order
    assert [m.name for m in matrices_to_print(matrices, 6)] == [f"m{i}" for i in range(6)]  # all fit: model order
    assert [m.name for m in matrices_to_print(matrices, None)] == [f"m{i}" for i in range(6)]  # --all
    assert [m.name for m in matrices_to_print(matrices, 5)] == ["m2", "m1", "m4", "m5"]  # never one without
    shown = matrices_to_print(matrices, 5)
    assert unlisted_lines(matrices, shown)[0] == "… and 2 more matrices not listed, without intruders"
    assert unlisted_lines(matrices, [])[0] == "6 matrices not listed: 4 with intruders, 2 without"
    assert unlisted_lines(matrices, matrices) == []


def test_a_planted_adapter_on_a_causal_lm_loads_whole_into_the_causal_lm(tmp_path):
    """Planted on a causal LM, the adapter's keys are those peft loads into AutoModelForCausalLM (none missing, B
    not zero there), and `analyze` finds the planted intruders."""
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import intrudim
    from intrudim.experiments.planted import build_planted_adapter

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(tmp_path / "lm")  # fmt: skip
    adapter = build_planted_adapter(tmp_path / "lm", tmp_path / "adapter", seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), adapter)
    assert not [w for w in caught if "missing" in str(w.message).lower()], [str(w.message) for w in caught]
    loaded = dict(model.named_parameters())
    b = next(v for k, v in loaded.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    assert b.abs().max() > 0  # the planted factors reached the model
    assert intrudim.analyze(tmp_path / "lm", adapter, use_cache=False).total_intruders > 0
