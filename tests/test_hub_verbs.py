"""Every verb on Hub repo ids, offline from a real Hub cache in huggingface_hub's layout: the results equal those of
the same files given as folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hub import hub_base_and_lora
from typer.testing import CliRunner

import intrudim
from intrudim.cli import app


@pytest.fixture
def hub(tiny_models, tmp_path, monkeypatch) -> dict[str, Path]:
    """BASE (tiny LLaMA) as org/base and a peft adapter recording 'org/base' as its base, as org/lora."""
    cache, adapter = hub_base_and_lora(tiny_models, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named org/…
    return {"base": tiny_models["llama"], "adapter": adapter}


def _counts(result) -> list[tuple]:
    return [(m.name, m.intruders, tuple(m.intruder_ranks)) for m in result.matrices]


def test_analyze_on_hub_ids_equals_folders(hub) -> None:
    folders = intrudim.analyze(hub["base"], hub["adapter"], k=6, use_cache=False)
    assert folders.total_intruders > 0
    for base in ("org/base", "org/base@main", None):
        result = intrudim.analyze(base, "org/lora", k=6, use_cache=False)
        assert _counts(result) == _counts(folders)
        assert "Hub org/base" in result.base
    cli = CliRunner().invoke(app, ["analyze", "org/lora", "--k", "6", "--no-cache", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["total_intruders"] == folders.total_intruders


def test_repair_scan_and_forgetting_take_hub_ids(hub, tmp_path) -> None:
    from intrudim.analysis.config import AnalyzeConfig
    from intrudim.scan.config import ScanConfig
    from intrudim.scan.running import scan

    from_folders = intrudim.repair(hub["base"], hub["adapter"], lam=0.5, k=6, out=tmp_path / "r1", use_cache=False)
    from_hub = intrudim.repair("org/lora", lam=0.5, k=6, out=tmp_path / "r2", use_cache=False)
    assert from_hub.total_intruders == from_folders.total_intruders > 0
    a = (tmp_path / "r1" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (tmp_path / "r2" / "adapter" / "adapter_model.safetensors").read_bytes()

    result = scan("org/base", ["org/lora", str(hub["adapter"])], tmp_path / "scan",
                  ScanConfig(analysis=AnalyzeConfig(k=6)), cache_dir=tmp_path / "svd")  # fmt: skip
    rows = result.document["rows"]
    assert [r["error"] for r in rows] == [None, None]
    assert rows[0]["total_intruders"] == rows[1]["total_intruders"] == from_folders.total_intruders


def test_missing_repo_offline_is_one_paragraph(hub) -> None:
    cli = CliRunner().invoke(app, ["analyze", "org/base", "org/not-cached"])
    assert cli.exit_code == 2 and "Traceback" not in cli.output
    assert "org/not-cached" in cli.output and "hf download org/not-cached" in cli.output


def test_model_to_train_resolves_from_the_hub_cache(hub) -> None:
    from intrudim.models.references import resolve_model_folder

    folder = resolve_model_folder("org/base", what="--model")
    assert (folder / "config.json").is_file() and "models--org--base" in str(folder)
    assert (folder / "model.safetensors").read_bytes() == (hub["base"] / "model.safetensors").read_bytes()


def test_base_other_than_the_recorded_hub_base_is_refused_naming_both(hub) -> None:
    cli = CliRunner().invoke(app, ["analyze", "org/other-base", "org/lora"])
    assert cli.exit_code == 2 and "Traceback" not in cli.output
    assert "org/other-base" in cli.output and "records 'org/base'" in cli.output
