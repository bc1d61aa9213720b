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
