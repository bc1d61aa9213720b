"""The examples a user copies run, offline, as they are: the notebook is executed by a real Jupyter kernel, and
each script in examples/ runs as a user runs it (a subprocess), on tiny models built here and a Hub cache on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_peft_adapter
from test_hub import hub_base_and_lora

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_peft_model_notebook_runs_and_shows_its_results(tmp_path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / "peft_model_in_a_notebook.ipynb", as_version=4)
    monkeypatch.setenv("INTRUDIM_CACHE", str(tmp_path / "cache"))  # the kernel inherits this process's environment
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "intruder dimensions (k=10, ε=0.5)" in text
    before, after = (int(n) for n in text.split("intruders: ")[1].split(" after")[0].split(" before, "))
    assert before > 0 and after < before  # the planted intruders are found, and λ = 0 removes them
    assert "contrastive: tuned − base" in text and text.count("95% CI") == 2
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the figures render inline


# --------------------------------------------------------------------------------------------------------------
# The scripts in examples/, run as a user runs them (`python examples/x.py ...`), offline, on tiny models


def run_example(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """``python examples/<script> args...`` in ``cwd``; its output, after checking that it succeeded."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "INTRUDIM_CACHE": str(cwd / "intrudim-cache"), **(env or {})}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def table_rows(stdout: str, first: str) -> list[list[str]]:
    """The whitespace-split lines of a printed table whose first cell is ``first``."""
    return [line.split() for line in stdout.splitlines() if line.split()[:1] == [first]]


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A tiny random LLaMA causal LM saved with a real tokenizer (the embedded MiniLM's WordPiece): enough for text,
    training and forgetting, in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from intrudim.models.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_causal_lm") / "base"
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_analyze_hub_adapter_reads_the_hub_cache_and_writes_a_report(tiny_models, tmp_path) -> None:
    import intrudim

    cache, adapter = hub_base_and_lora(tiny_models, tmp_path)
    expected = intrudim.analyze(tiny_models["llama"], adapter, k=6, use_cache=False)
    assert expected.total_intruders > 0

    work = tmp_path / "work"  # no local folder named org/…
    work.mkdir()
    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    done = run_example("analyze_hub_adapter.py", "org/lora", "--k", "6", "--out", "report", cwd=work, env=env)
    with_intruders = sum(1 for m in expected.matrices if m.intruders)
    assert (f"{expected.total_intruders} intruder dimensions (k=6, ε=0.5) in {with_intruders} of "
            f"{len(expected.matrices)} matrices") in done.stdout  # fmt: skip
    assert "Hub org/base" in done.stdout  # the base the adapter records, from the Hub cache
    worst = max(expected.matrices, key=lambda m: m.intruders)
    assert f"{worst.name}" in done.stdout and f"{worst.intruders:3d}   ranks #{worst.intruder_ranks[0]}" in done.stdout
    written = json.loads((work / "report" / "analysis.json").read_text())
    assert written["total_intruders"] == expected.total_intruders
    assert (work / "report" / "report.html").is_file() and list((work / "report" / "figures").glob("*.png"))
    assert "report: report/report.html" in done.stdout


@pytest.mark.slow
def test_repair_and_compare_removes_intruders_and_measures_forgetting(tiny_causal_lm, tmp_path) -> None:
    done = run_example("repair_and_compare.py", "--base", str(tiny_causal_lm), "--lam", "0", "--text", "news",
                       "--max-tokens", "1500", "--save", "saved", cwd=tmp_path)  # fmt: skip
    (default,) = table_rows(done.stdout, "default")
    (repaired,) = table_rows(done.stdout, "repaired")
    before, after = int(default[1]), int(repaired[1])
    assert before > 0 and after < before  # the planted intruders are found, and λ = 0 removes them
    assert f"after the repair: {after} intruder dimensions remain" in " ".join(done.stdout.split())
    base_loss, tuned_loss, forgetting = (float(v) for v in default[3:6])
    assert repaired[3] == default[3]  # the same BASE (the adapters disabled), the same text
    assert forgetting == pytest.approx(tuned_loss - base_loss, abs=2e-4) and forgetting != 0.0
    assert float(repaired[5]) != forgetting  # the repaired adapter is another model
    assert "tokens of 'news'" in done.stdout
    assert (tmp_path / "saved" / "adapter_config.json").is_file()
    assert (tmp_path / "saved" / "repaired" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_track_trainer_run_prints_the_intruder_timeline(tiny_causal_lm, tmp_path) -> None:
    done = run_example("track_trainer_run.py", "--model", str(tiny_causal_lm), "--steps", "10", "--every", "5",
                       "--out", "out", cwd=tmp_path)  # fmt: skip
    timeline = json.loads((tmp_path / "out" / "intrudim_timeline.json").read_text())
    steps = {record["step"]: record for record in timeline["steps"]}
    assert sorted(steps) == [5, 10]
    printed = {int(row[0]): row for row in (line.split() for line in done.stdout.splitlines())
               if len(row) >= 4 and row[0].isdigit()}  # fmt: skip
    assert sorted(printed) == [5, 10]
    for step, record in steps.items():
        assert int(printed[step][1]) == record["total_intruders"]
    assert steps[10]["total_intruders"] > 0  # a high learning rate on a low rank grows intruders within 10 steps
    logged = [steps[5]["total_intruders"], steps[10]["total_intruders"]]
    assert f"logged to the Trainer: intrudim/intruders = {logged}" in done.stdout
    assert (tmp_path / "out" / "intrudim_intruders.png").is_file()


@pytest.mark.slow
def test_scan_on_ray_ranks_a_folder_of_adapters(tiny_models, tmp_path) -> None:
    pytest.importorskip("ray")
    import intrudim

    base = tiny_models["llama"]
    adapters = [write_peft_adapter(base, "llama", tmp_path / "adapters" / f"lora_r{r}", r=r, seed=20 + r, strength=s)
                for r, s in ((1, 0.3), (2, 1.0), (4, 3.0))]  # fmt: skip
    expected = {a.name: intrudim.analyze(base, a, k=6, use_cache=False).total_intruders for a in adapters}
    assert len(set(expected.values())) == 3  # three different counts (1, 5 and 10): the ranking shows
    done = run_example("scan_on_ray.py", str(base), "--glob", "adapters/*", "--workers", "2", "--k", "6",
                       "--out", "scan", cwd=tmp_path, env={"RAY_AUTH_MODE": "disabled"})  # fmt: skip
    assert "3 adapters of" in done.stdout and "on Ray with 2 workers" in done.stdout
    rows = {row[1]: row for row in (line.split() for line in done.stdout.splitlines()) if row[1:2] and row[1] in expected}
    assert {name: int(row[2]) for name, row in rows.items()} == expected
    places = sorted(rows.values(), key=lambda row: int(row[0]))
    assert [int(row[2]) for row in places] == sorted(expected.values(), reverse=True)  # ranked, most first
    document = json.loads((tmp_path / "scan" / "leaderboard.json").read_text())
    assert document["engine"] == "ray" and [r["error"] for r in document["rows"]] == [None, None, None]
    assert (tmp_path / "scan" / "leaderboard.html").is_file()
