"""Continual learning (Fig. 8) on tiny random models built here: stages chain through merged weights, heads stay
per task, intruders are counted against the original base, resume, bad input through the CLI, figures."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from intrudim.analysis import analyze
from intrudim.errors import IntrudimError
from intrudim.experiments.continual import (
    ContinualConfig,
    ContinualResult,
    continual_plan,
    run_continual,
)
from intrudim.train import TrainConfig

TASKS = ("sentiment", "topic")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; results must not depend on the shared CPU's load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _save_tokenizer(folder: Path) -> int:
    from test_train_causal import _save_tokenizer as save  # word-level: the generated tasks and the prompts

    return save(folder)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BertModel (no head) with a word-level tokenizer, like the embedded MiniLM."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    vocab = _save_tokenizer(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(folder))  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM (tied head), like SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    vocab = _save_tokenizer(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=True,
    )).save_pretrained(str(folder))  # fmt: skip
    return folder


def _config(model: Path, **overrides: Any) -> ContinualConfig:
    train = TrainConfig(model=str(model), max_steps=6, eval_every=6, checkpoint_every=3, max_train_examples=64,
                        max_validation_examples=32, eval_batch_size=32, max_length=32, log_every=3, lr=5e-3)  # fmt: skip
    fields: dict[str, Any] = dict(tasks=TASKS, ranks=(2, "full"), train=train)
    fields.update(overrides)
    return ContinualConfig(**fields)


@pytest.fixture(scope="module")
def bert_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ContinualResult, list[tuple]]:
    calls: list[tuple] = []
    out = tmp_path_factory.mktemp("continual") / "out"
    result = run_continual(_config(tiny_bert), out, progress=False, on_step=lambda *call: calls.append(call))
    return result, calls


def _block_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Block linear weights of an HF folder, keyed from 'encoder.' on (BertModel and *ForSequenceClassification)."""
    tensors = load_file(str(folder / "model.safetensors"))
    found = {}
    for key, value in tensors.items():
        if ".layer." in key and key.endswith(".weight") and value.ndim == 2:
            found[key[key.index("encoder.") :]] = value.to(torch.float64)
    return found


def _lora_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """ΔW = (α/r)·B·A of every adapted matrix, read from the adapter's own files (float64)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = {}
    for key, A in tensors.items():
        if ".lora_A." not in key:
            continue
        B = tensors[key.replace(".lora_A.", ".lora_B.")]
        name = key[key.index("encoder.") :].replace(".lora_A.weight", ".weight")
        deltas[name] = scale * B.to(torch.float64) @ A.to(torch.float64)  # (out, r) @ (r, in)
    return deltas


# --- the accuracy matrix -----------------------------------------------------------------------------------------


def test_accuracy_matrix_shape_none_pattern_and_baselines(bert_run) -> None:
    result, _ = bert_run
    assert set(result.methods) == {"r-2", "full"}
    for label in ("r-2", "full"):
        matrix = result.accuracy_matrix(label)
        assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)  # stages 0..2 × tasks
        assert matrix[0] == [None, None]  # an encoder has no head before a task's stage
        assert matrix[1][0] is not None and matrix[1][1] is None
        assert all(value is not None and 0.0 <= value <= 1.0 for value in matrix[2])
        baselines = result.baselines(label)
        assert baselines == {"sentiment": matrix[1][0], "topic": matrix[2][1]}
        method = result.methods[label]
        assert method.forgetting == {"sentiment": pytest.approx(matrix[1][0] - matrix[2][0])}
        # The baseline is the run's own accuracy: the merged weights with the task's head score as trained.
        assert method.stages[1].train_accuracy == pytest.approx(matrix[1][0], abs=1e-9)
        assert result.intruders(label)[0] == 0 and len(result.energy_shares(label)) == 3
    data = json.loads(result.paths["json"].read_text())
    assert data["methods"]["r-2"]["accuracy"] == result.accuracy_matrix("r-2")
    assert data["stages"] == ["base", "sentiment", "topic"]
    assert ContinualConfig.from_json(data["config"]) == result.config
    rows = result.paths["csv"].read_text().splitlines()
    assert rows[0].startswith("method,rank,stage,trained_task,task,accuracy,baseline,intruders")
    assert len(rows) == 1 + 2 * 3 * 2  # methods × stages × tasks


def test_on_step_reports_every_step_of_every_stage(bert_run) -> None:
    result, calls = bert_run
    plan = continual_plan(result.config)
    assert plan == [("r-2/stage-1-sentiment", 6), ("r-2/stage-2-topic", 6), ("full/stage-1-sentiment", 6),
                    ("full/stage-2-topic", 6)]  # fmt: skip
    assert calls == [(label, step, total) for label, total in plan for step in range(1, total + 1)]


# --- stages chain through merged weights ---------------------------------------------------------------------------


def test_each_stage_starts_from_the_previous_stage_merged_weights(bert_run, tiny_bert: Path) -> None:
    result, _ = bert_run
    root = result.out_dir / "r-2"
    stage1, stage2 = root / "stage-1-sentiment", root / "stage-2-topic"
    base = _block_weights(tiny_bert)
    merged1, merged2 = _block_weights(stage1 / "merged"), _block_weights(stage2 / "merged")
    delta1, delta2 = _lora_deltas(stage1 / "run" / "final"), _lora_deltas(stage2 / "run" / "final")
    assert set(delta1) == set(base) and set(merged1) == set(base)
    for name, W0 in base.items():
        assert torch.allclose(merged1[name], W0 + delta1[name], atol=1e-6), name
        assert torch.allclose(merged2[name], merged1[name] + delta2[name], atol=1e-6), name
    assert float(sum((d**2).sum() for d in delta2.values())) > 0  # stage 2 did train a fresh adapter
    stage2_config = json.loads((stage2 / "run" / "config.json").read_text())
    assert Path(stage2_config["model"]) == stage1 / "merged"
    assert stage2_config["method"] == "lora" and stage2_config["rank"] == 2 and stage2_config["task"] == "topic"
    full2 = json.loads((result.out_dir / "full" / "stage-2-topic" / "run" / "config.json").read_text())
    assert Path(full2["model"]) == result.out_dir / "full" / "stage-1-sentiment" / "merged"
    assert full2["lr"] == pytest.approx(5e-3)  # the template's η at every stage


def test_intruders_accumulate_against_the_original_base(bert_run, tiny_bert: Path) -> None:
    result, _ = bert_run
    for label in ("r-2", "full"):
        for stage in result.methods[label].stages[1:]:
            reference = analyze(tiny_bert, stage.weights, k=10, epsilon=0.5, effective_rank=False, use_cache=False)
            assert stage.intruders == reference.total_intruders, (label, stage.stage)
            assert stage.energy_share == pytest.approx(reference.to_json()["intruder_energy_share_mean"])
            assert stage.matrices_analysed == len(reference.matrices) > 0


def test_each_task_keeps_its_own_head(bert_run) -> None:
    from intrudim.evaluate.accuracy import accuracy
    from intrudim.models.loading import load_base_model
    from intrudim.tasks import get_task

    result, _ = bert_run
    root = result.out_dir / "r-2"
    head1 = load_file(str(root / "stage-1-sentiment" / "head.safetensors"))
    adapter = load_file(str(root / "stage-1-sentiment" / "run" / "final" / "adapter_model.safetensors"))
    assert torch.equal(head1["classifier.weight"], adapter["base_model.model.classifier.weight"])  # trained in stage 1
    assert torch.equal(head1["bert.pooler.dense.weight"], adapter["base_model.model.bert.pooler.dense.weight"])
    assert "classifier.weight" not in load_file(str(root / "stage-2-topic" / "merged" / "model.safetensors"))
    # Task 1 after stage 2: the stage-2 weights with task 1's own head.
    train = result.config.train
    task = get_task("sentiment", seed=train.seed, max_train_examples=64, max_validation_examples=32)
    model, tokenizer = load_base_model(root / "stage-2-topic" / "merged", task.head_outputs)
    model.load_state_dict(head1, strict=False)
    by_hand = accuracy(model, tokenizer, task.validation, task.kind, max_length=32)
    assert by_hand == pytest.approx(result.accuracy_matrix("r-2")[2][0])


def test_figures_are_written_and_not_blank(bert_run) -> None:
    import matplotlib.image

    result, _ = bert_run
    for key in ("accuracy_figure", "intruders_figure"):
        image = matplotlib.image.imread(str(result.paths[key]))
        assert image.shape[0] > 200 and image.shape[1] > 400 and float(image[..., :3].std()) > 0.05, key


# --- causal LM -----------------------------------------------------------------------------------------------------


def test_causal_lm_measures_every_task_at_every_stage(tiny_llama: Path, tmp_path: Path) -> None:
    from intrudim.evaluate.accuracy import accuracy
    from intrudim.models.loading import load_causal_lm
    from intrudim.tasks import get_task
    from intrudim.tasks.prompts import prompt_format

    config = _config(tiny_llama, ranks=(2,), train=TrainConfig(
        model=str(tiny_llama), max_steps=4, eval_every=4, checkpoint_every=None, max_train_examples=48,
        max_validation_examples=24, eval_batch_size=24, max_length=32, lr=5e-3,
    ))  # fmt: skip
    result = run_continual(config, tmp_path / "out", progress=False)
    assert result.objective == "causal-lm"
    matrix = result.accuracy_matrix("r-2")
    assert len(matrix) == 3 and all(value is not None for row in matrix for value in row)
    task = get_task("topic", seed=config.train.seed, max_train_examples=48, max_validation_examples=24)
    model, tokenizer = load_causal_lm(tiny_llama)
    base_accuracy = accuracy(model, tokenizer, task.validation, task.kind, max_length=32, prompt_format=prompt_format(task))
    assert matrix[0][1] == pytest.approx(base_accuracy)  # stage 0 is the base model
    last = result.methods["r-2"].stages[-1]
    assert last.intruders == analyze(tiny_llama, last.weights, effective_rank=False, use_cache=False).total_intruders
    assert not (tmp_path / "out" / "r-2" / "stage-1-sentiment" / "head.safetensors").exists()


# --- resume --------------------------------------------------------------------------------------------------------


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """continual.json without what differs between two out dirs or two runs of one: paths and seconds."""
    data = json.loads(json.dumps(data))
    data.pop("paths"), data.pop("seconds")
    for method in data["methods"].values():
        for stage in method["stages"]:
            for key in ("weights", "train_seconds", "evaluate_seconds", "analysis_seconds"):
                stage.pop(key)
    return data


def test_resume_after_an_interruption_gives_the_same_result(bert_run, tiny_bert: Path, tmp_path: Path) -> None:
    result, _ = bert_run

    def interrupt(label: str, step: int, total: int) -> None:
        if label == "r-2/stage-2-topic" and step == 4:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_continual(_config(tiny_bert), out, progress=False, on_step=interrupt)
    assert (out / "r-2" / "stage-1-sentiment" / "stage.json").exists()
    assert not (out / "r-2" / "stage-2-topic" / "stage.json").exists() and not (out / "continual.json").exists()
    calls: list[tuple] = []
    resumed = run_continual(_config(tiny_bert), out, resume=True, progress=False, on_step=lambda *c: calls.append(c))
    assert calls[0] == ("r-2/stage-1-sentiment", 6, 6)  # finished earlier: reported once, at its end
    assert calls[1] == ("r-2/stage-2-topic", 4, 6)  # continued from its checkpoint at step 3
    assert _comparable(resumed.to_json()) == _comparable(result.to_json())
    assert _comparable(json.loads((out / "continual.json").read_text())) == _comparable(result.to_json())


def test_resume_with_other_settings_is_refused_naming_them(bert_run, tiny_bert: Path) -> None:
    result, _ = bert_run
    before = sorted(p.name for p in result.out_dir.iterdir())
    config = _config(tiny_bert, ranks=(2,), train=replace(_config(tiny_bert).train, max_steps=7))
    with pytest.raises(IntrudimError) as error:
        run_continual(config, result.out_dir, resume=True, progress=False)
    assert "ranks: [2, 'full'] in the run, [2] now" in str(error.value)
    assert "train.max_steps: 6 in the run, 7 now (option --steps)" in str(error.value)
    with pytest.raises(IntrudimError, match="already exists and is not empty. Nothing was changed"):
        run_continual(_config(tiny_bert), result.out_dir, progress=False)
    assert sorted(p.name for p in result.out_dir.iterdir()) == before


# --- bad input through the CLI -------------------------------------------------------------------------------------


def _invoke(*args: str):
    from typer.testing import CliRunner

    from intrudim.cli import app  # registers `continual` from experiments/continual_commands.py

    return CliRunner().invoke(app, ["continual", *args])


def test_cli_bad_input_is_one_clear_message(tiny_bert: Path, tmp_path: Path) -> None:
    common = ["--model", str(tiny_bert), "--steps", "2", "--quiet"]
    unknown = _invoke(*common, "--tasks", "sentiment,sentimnt", "--out", str(tmp_path / "a"))
    assert unknown.exit_code == 2 and "Unknown task 'sentimnt'" in unknown.output and "Known tasks: sentiment" in unknown.output
    ranks = _invoke(*common, "--ranks", "1,x", "--out", str(tmp_path / "b"))
    assert ranks.exit_code == 2 and "'x' is neither a positive integer nor 'full'" in ranks.output
    method = _invoke(*common, "--method", "full", "--out", str(tmp_path / "c"))
    assert method.exit_code == 2 and "lora or lora-b-only" in method.output
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    unwritable = _invoke(*common, "--tasks", "sentiment", "--out", str(blocker / "out"))
    assert unwritable.exit_code == 2 and "Cannot write to --out directory" in unwritable.output
    nothing = _invoke(*common, "--resume", "--out", str(tmp_path / "empty"))
    assert nothing.exit_code == 2 and "Nothing to resume" in nothing.output
    device = _invoke(*common, "--tasks", "sentiment", "--device", "gpu", "--out", str(tmp_path / "d"))
    assert device.exit_code == 2 and "--device 'gpu' is unknown for training" in device.output  # it was ignored once
    checked = [unknown, ranks, method, unwritable, nothing, device]
    if not torch.cuda.is_available():
        cuda = _invoke(*common, "--tasks", "sentiment", "--device", "cuda", "--out", str(tmp_path / "e"))
        assert cuda.exit_code == 2 and "no CUDA GPU is available here" in cuda.output
        checked.append(cuda)
    for run in checked:
        assert "Traceback" not in run.output and (run.exception is None or isinstance(run.exception, SystemExit))
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c", "d", "e"))


def test_cli_runs_and_prints_the_matrix(tiny_bert: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_bert), "--tasks", "sentiment", "--ranks", "2", "--steps", "2", "--eval-every", "2",
            "--checkpoint-every", "0", "--max-train-examples", "32", "--max-validation-examples", "16",
            "--max-length", "32", "--lr", "5e-3", "--seed", "3", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    run = _invoke(*args)
    assert run.exit_code == 0, run.output
    assert "sentiment" in run.output and "continual.json" in run.output and "intruders" in run.output
    stored = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert stored["train"]["seed"] == 3 and stored["train"]["max_steps"] == 2 and stored["ranks"] == [2]
    again = _invoke(*args[:-2], "--resume", "--json", "--out", str(tmp_path / "cli"))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["methods"]["r-2"]["accuracy"][0] == [None]
