"""Training engine on tiny random models built in the test: methods, run directory, resume, bad input, CLI."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import dense_reference
from safetensors.torch import load_file

from intrudim.errors import IntrudimError
from intrudim.spectral.prediction import DEFAULT_PRESSURE_THRESHOLD
from intrudim.tasks.generated import generated_task_specs
from intrudim.train import TrainConfig, rank_sweep, read_metrics, train
from intrudim.train.config import EMBEDDED_FULL_FT_LR, PAPER_FULL_FT_LR
from intrudim.train.methods import build_model, orthonormal_rows
from intrudim.train.run_dir import check_run_dir, prepare_run_dir
from intrudim.weights.svd_cache import default_cache_dir

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when the CPU is shared. Module scope: every run
    of this module, including module-scoped fixtures, uses the same thread count (results depend on it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _vocabulary() -> list[str]:
    words: set[str] = set()
    for spec in generated_task_specs():
        task = spec.build(seed=0, train_size=300, validation_size=20)
        for example in task.train:
            for text, pair in example.choices:
                words.update(text.split())
                words.update((pair or "").split())
    words.update("a b c d e f g h i j k l m n o p q r s t u v w x y z . , ; ' _ ?".split())
    return SPECIAL + sorted(words - set(SPECIAL))


def _save_tokenizer(folder: Path) -> int:
    from transformers import BertTokenizerFast

    vocab = _vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary itself (``vocab_file=`` is ignored: every word would be [UNK]).
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer("the movie")["input_ids"][1:3] == [vocab.index("the"), vocab.index("movie")]
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _save_random_model(factory: pytest.TempPathFactory, name: str, build: Callable[[int], Any]) -> Path:
    """A random model from ``build(vocab_size)`` saved with the word-level tokenizer of the generated tasks."""
    folder = factory.mktemp(name)
    vocab_size = _save_tokenizer(folder)
    torch.manual_seed(0)
    build(vocab_size).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BertModel (no head) with a word-level tokenizer, like the embedded MiniLM."""
    from transformers import BertConfig, BertModel

    return _save_random_model(tmp_path_factory, "tiny_bert", lambda vocab_size: BertModel(BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )))  # fmt: skip


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LLaMA: another architecture with a sequence-classification head (``score``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_random_model(tmp_path_factory, "tiny_llama", lambda vocab_size: LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )))  # fmt: skip


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random GPT-2: its block matrices are Conv1D, stored (in, out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _save_random_model(tmp_path_factory, "tiny_gpt2", lambda vocab_size: GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,
    )))  # fmt: skip


def _config(model: Path, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = dict(
        model=str(model), task="sentiment", method="lora", rank=2, max_steps=12, eval_every=4,
        checkpoint_every=4, max_train_examples=96, max_validation_examples=32, eval_batch_size=32,
        max_length=32, log_every=2, lr=5e-3,
    )  # fmt: skip
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


# --- configuration ---------------------------------------------------------------------------------------------


def test_learning_rates_follow_the_total_learning_rate_rule() -> None:
    paper = {"model": "/some/model"}  # any model but the embedded one gets the paper's constants
    assert TrainConfig(rank=8, **paper).resolved_alpha == 16
    assert TrainConfig(rank=8, **paper).learning_rate == pytest.approx(1.5e-4)  # α·η = 2.4e-3 (App. A)
    assert TrainConfig(rank=1, **paper).learning_rate == pytest.approx(1.2e-3)
    fixed = TrainConfig(rank=64, alpha_rule="fixed", **paper)
    assert (fixed.resolved_alpha, fixed.lora_scale, fixed.learning_rate) == (8.0, 0.125, pytest.approx(3e-4))
    assert TrainConfig(rank=4, alpha=16).alpha_rule == "fixed"  # an explicit α means a fixed α
    rs = TrainConfig(rank=16, alpha_rule="rslora")
    assert rs.lora_scale == pytest.approx(8 / 4)
    assert TrainConfig(rank=1).learning_rate == pytest.approx(1.2e-3)  # the embedded MiniLM too
    assert TrainConfig(rank=1, total_lr=4.8e-3).learning_rate == pytest.approx(2.4e-3)
    assert TrainConfig(method="full").learning_rate == EMBEDDED_FULL_FT_LR
    assert TrainConfig(method="full", **paper).learning_rate == PAPER_FULL_FT_LR == 1e-5
    assert TrainConfig(rank=8, lr=1e-3).learning_rate == 1e-3
    again = TrainConfig.from_json(json.loads(json.dumps(TrainConfig(rank=4, target_accuracy=0.9).to_json())))
    assert again == TrainConfig(rank=4, target_accuracy=0.9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "qlora"}, "method='qlora' is unknown"),
        ({"alpha_rule": "4r"}, "alpha_rule='4r' is unknown"),
        ({"rank": 0}, "rank=0 must be a positive integer"),
        ({"target_accuracy": 1.5}, "target_accuracy=1.5"),
        ({"lr": -1.0}, "lr=-1.0 must be a positive number"),
        ({"warmup_ratio": 1.0}, "warmup_ratio=1.0"),
        ({"train_fraction": 0.0}, "train_fraction=0.0"),
        ({"intruder_epsilon": 2.0}, "intruder_epsilon=2.0"),
        ({"other_lr": 0.0}, "other_lr=0.0 must be a positive number"),
        ({"schedule": "cosine"}, "schedule='cosine' is unknown"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0 must be a positive number"),
    ],
)
def test_bad_config_values_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(IntrudimError, match=message):
        TrainConfig(**overrides)  # type: ignore[arg-type]


# --- methods ---------------------------------------------------------------------------------------------------


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_adapters_biases_layernorms_and_head_only(tiny_bert: Path) -> None:
    parts = build_model(_config(tiny_bert), tiny_bert, head_outputs=2)
    assert len(parts.target_modules) == 12  # q, k, v, attention.output, intermediate, output × 2 layers
    trainable = _trainable(parts.model)
    assert sum("lora_A" in n for n in trainable) == sum("lora_B" in n for n in trainable) == 12
    assert sum(n.endswith("base_layer.bias") for n in trainable) == 12
    assert not any(n.endswith("base_layer.weight") for n in trainable)  # W₀ frozen
    assert sum("LayerNorm" in n for n in trainable) == 2 * 5  # embeddings + 2 per layer, weight and bias
    assert any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable)
    assert not any("embeddings" in n and "LayerNorm" not in n for n in trainable)


def test_other_lr_gives_non_lora_parameters_their_own_learning_rate(tiny_bert: Path) -> None:
    from intrudim.train.recipe import _make_optimizer

    parts = build_model(_config(tiny_bert, other_lr=1e-4), tiny_bert, head_outputs=2)
    optimizer, _ = _make_optimizer(parts.model, _config(tiny_bert, other_lr=1e-4), 10)
    lora_group, other_group = optimizer.param_groups
    assert (lora_group["initial_lr"], other_group["initial_lr"]) == (5e-3, 1e-4)
    assert len(lora_group["params"]) == 24 and len(other_group["params"]) == len(_trainable(parts.model)) - 24


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_schedule_warms_up_then_decays_or_holds(tiny_bert: Path, schedule: str) -> None:
    from intrudim.train.recipe import _make_optimizer

    config = _config(tiny_bert, schedule=schedule, warmup_ratio=0.1, lr=1e-3)
    parts = build_model(config, tiny_bert, head_outputs=2)
    optimizer, scheduler = _make_optimizer(parts.model, config, 100)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1e-3)  # 10 warm-up steps (10% of 100)
    assert rates[5] == pytest.approx(5e-4)
    if schedule == "linear":
        assert rates[55] == pytest.approx(5e-4) and rates[99] == pytest.approx(1e-3 / 90)
    else:
        assert rates[55] == rates[99] == pytest.approx(1e-3)


def test_gradient_clipping_bounds_the_first_step(tiny_bert: Path, tmp_path: Path) -> None:
    """Adam's first step moves every trained entry by ≈ lr whatever the gradient's scale, unless the clipped
    gradient falls below Adam's ε (1e-8): with max_grad_norm=1e-12 the step all but vanishes."""

    def first_step_change(name: str, max_grad_norm: float | None) -> float:
        config = _config(tiny_bert, max_steps=1, eval_every=1, checkpoint_every=None, track_intruders=False,
                         warmup_ratio=0.0, schedule="constant", max_grad_norm=max_grad_norm)  # fmt: skip
        train(config, tmp_path / name, progress=False, figures=False)
        tensors = _tensors(tmp_path / name / "final")
        return max(float(t.abs().max()) for key, t in tensors.items() if "lora_B" in key)  # B starts at 0

    assert first_step_change("unclipped", None) == pytest.approx(5e-3, rel=1e-3)
    assert first_step_change("clipped", 1e-12) < 5e-3 / 100


def test_full_fine_tuning_freezes_only_embeddings(tiny_bert: Path) -> None:
    parts = build_model(_config(tiny_bert, method="full"), tiny_bert, head_outputs=2)
    frozen = {name for name, p in parts.model.named_parameters() if not p.requires_grad}
    assert frozen == {f"bert.embeddings.{kind}_embeddings.weight" for kind in ("word", "position", "token_type")}


def test_b_only_lora_has_frozen_orthonormal_a(tiny_bert: Path) -> None:
    parts = build_model(_config(tiny_bert, method="lora-b-only", rank=4), tiny_bert, head_outputs=2)
    a_matrices = [p for n, p in parts.model.named_parameters() if "lora_A" in n]
    assert len(a_matrices) == 12 and not any(p.requires_grad for p in a_matrices)
    for weight in a_matrices:
        assert torch.allclose(torch.linalg.svdvals(weight.double()), torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert all(p.requires_grad for n, p in parts.model.named_parameters() if "lora_B" in n)
    q = orthonormal_rows(3, 10, torch.Generator().manual_seed(0))
    assert torch.allclose(q @ q.T, torch.eye(3), atol=1e-6)


def test_rank_larger_than_a_matrix_is_refused_by_name(tiny_bert: Path) -> None:
    with pytest.raises(IntrudimError, match=r"--rank 40 is larger than the matrix .*\(32, 32\).*at most"):
        build_model(_config(tiny_bert, rank=40), tiny_bert, head_outputs=2)



def test_any_hf_architecture_llama(tiny_llama: Path, tmp_path: Path) -> None:
    """A causal LM with a classification head (``objective="classification"``; by default it trains as an LM)."""
    parts = build_model(_config(tiny_llama, objective="classification"), tiny_llama, head_outputs=2)
    assert {name.rsplit(".", 1)[-1] for name in parts.target_modules} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # fmt: skip
    assert any("score" in n for n in _trainable(parts.model))
    assert any("input_layernorm" in n for n in _trainable(parts.model))
    result = train(_config(tiny_llama, max_steps=4, checkpoint_every=None, objective="classification"), tmp_path / "llama",
                   progress=False, figures=False)  # fmt: skip
    assert (result.final_dir / "adapter_config.json").exists() and result.steps == 4


def test_gpt2_conv1d_b_only_run_is_tracked_like_the_dense_reference(tiny_gpt2: Path, tmp_path: Path) -> None:
    """Conv1D layers train with frozen orthonormal A; the tracked intruders equal float64 SVDs of peft's merge."""
    from peft import PeftModel
    from safetensors.torch import load_file as load_base

    from intrudim.models.loading import load_base_model

    config = _config(tiny_gpt2, method="lora-b-only", rank=2, lr=2e-2, max_steps=6, checkpoint_every=None,
                     objective="classification")  # fmt: skip
    parts = build_model(config, tiny_gpt2, head_outputs=2)
    assert {name.rsplit(".", 1)[-1] for name in parts.target_modules} == {"c_attn", "c_proj", "c_fc"}
    a_matrices = [p for n, p in parts.model.named_parameters() if "lora_A" in n]
    assert len(a_matrices) == 8 and not any(p.requires_grad for p in a_matrices)
    result = train(config, tmp_path / "gpt2", progress=False, figures=False)
    final = next(r for r in read_metrics(tmp_path / "gpt2") if r["event"] == "final")
    tracked = {m["name"]: m for m in final["intruders"]["matrices"]}
    assert len(tracked) == 8 and result.final_intruders == sum(m["intruders"] for m in tracked.values())

    base, _ = load_base_model(tiny_gpt2, 2)
    merged = PeftModel.from_pretrained(base, str(result.final_dir)).merge_and_unload().state_dict()
    stored = load_base(str(tiny_gpt2 / "model.safetensors"))
    merged_key = {name: next(k for k in merged if k.endswith(name)) for name in tracked}
    for name, matrix in tracked.items():
        reference = dense_reference(stored[name].T, merged[merged_key[name]].T, 10, 0.5)  # Conv1D (in, out) -> (out, in)
        assert torch.allclose(torch.tensor(matrix["max_abs_cos"], dtype=torch.float64), reference["max_cos"], atol=2e-4)
        assert torch.allclose(torch.tensor(matrix["singular_values"], dtype=torch.float64), reference["sigma"], atol=1e-4)
        assert matrix["intruders"] == reference["count"], name
        # the intruder pressure σ₁(ΔW)/σ_k(W₀) is tracked too, against float64 SVDs of the same matrices
        W0, Wt = stored[name].T.double(), merged[merged_key[name]].T.double()
        pressure = torch.linalg.svdvals(Wt - W0)[0] / torch.linalg.svdvals(W0)[9]
        assert matrix["intruder_pressure"] == pytest.approx(float(pressure), rel=1e-3), name
    deltas = [float((merged[merged_key[name]] - stored[name]).abs().max()) for name in tracked]
    assert max(deltas) > 1e-3  # B moved: the comparison is not of untouched weights

# --- a run ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    config = _config(tiny_bert)
    out = tmp_path_factory.mktemp("runs") / "lora"
    train(config, out, progress=False)
    return config, out


def test_run_directory_layout(lora_run: tuple[TrainConfig, Path], tiny_bert: Path) -> None:
    config, out = lora_run
    stored = json.loads((out / "config.json").read_text())
    assert stored["base_model"] == str(tiny_bert.resolve()) and Path(stored["base_model"]).is_absolute()
    assert stored["objective"] == "classification"  # "auto", resolved for an encoder and recorded
    assert TrainConfig.from_json(stored) == replace(config, objective="classification")
    assert stored["resolved"]["learning_rate"] == 5e-3
    for folder in ("final", "best", "checkpoints/step-4", "checkpoints/step-8", "checkpoints/step-12"):
        assert (out / folder / "adapter_config.json").is_file(), folder
        assert (out / folder / "adapter_model.safetensors").is_file(), folder
    assert (out / "checkpoints/step-8/training_state/optimizer.pt").is_file()
    assert (out / "figures" / "training_curves.png").stat().st_size > 1000
    records = read_metrics(out)
    assert [r["step"] for r in records if r["event"] == "eval"] == [4, 8, 12]
    assert [r["step"] for r in records if r["event"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert records[-1]["event"] == "stop" and records[-1]["reason"] == "max_steps"
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 12 and result["checkpoints"] == [4, 8, 12]


def test_final_adapter_reloads_with_peft(lora_run: tuple[TrainConfig, Path], tiny_bert: Path) -> None:
    from peft import PeftModel

    from intrudim.models.loading import load_base_model

    _, out = lora_run
    base, tokenizer = load_base_model(tiny_bert, 2)
    model = PeftModel.from_pretrained(base, str(out / "final")).eval()
    saved = _tensors(out / "final")
    b = next(v for k, v in saved.items() if "lora_B" in k)
    assert b.abs().max() > 0  # B moved away from its zero initialisation
    inputs = tokenizer(["the movie was great"], return_tensors="pt")
    assert model(**inputs).logits.shape == (1, 2)


def test_checkpoint_intruders_are_tracked(lora_run: tuple[TrainConfig, Path]) -> None:
    _, out = lora_run
    tracked = [r for r in read_metrics(out) if r["event"] in ("checkpoint", "final")]
    assert [r["step"] for r in tracked] == [4, 8, 12, 12]
    for record in tracked:
        intruders = record["intruders"]
        assert len(intruders["matrices"]) == 12
        assert intruders["total_intruders"] == sum(m["intruders"] for m in intruders["matrices"])
        for matrix in intruders["matrices"]:
            assert len(matrix["singular_values"]) == 10 and len(matrix["max_abs_cos"]) == 10
            assert matrix["intruders"] == sum(c < 0.5 for c in matrix["max_abs_cos"])
    assert (out / "figures" / "intruders_over_steps.png").is_file()
    assert not (out / "svd_cache").exists()  # the base SVDs went to the cache every verb shares
    assert any(default_cache_dir().rglob("*.safetensors"))
    pressures = [[m["intruder_pressure"] for m in r["intruders"]["matrices"]] for r in tracked]
    assert all(p > 0 for step in pressures for p in step)  # B moved in every matrix from step 4 on
    assert (out / "figures" / "pressure_over_steps.png").stat().st_size > 1000


def test_predict_scores_the_tracked_pressure_of_runs(lora_run: tuple[TrainConfig, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from intrudim.spectral.prediction import score_threshold

    _, out = lora_run
    records = [r for r in read_metrics(out) if r["event"] in ("checkpoint", "final")]
    assert [r["step"] for r in records] == [4, 8, 12, 12]  # the final weights are step 12's: counted once
    tracked = [m for r in records[:2] + records[3:] for m in r["intruders"]["matrices"]]
    result = CliRunner().invoke(_app(), ["predict", str(out), "--threshold", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["observations"] == 36 and report["runs"] == 1  # steps 4, 8, 12 (the final weights are step 12)
    expected = score_threshold([m["intruder_pressure"] for m in tracked], [m["intruders"] > 0 for m in tracked], 0.5)
    assert report["default"] == expected.to_json()
    text = CliRunner().invoke(_app(), ["predict", str(out)])
    assert text.exit_code == 0 and "over 36 tracked matrices of 1 run:" in " ".join(text.output.split())
    for bad, message in ((tmp_path / "missing", "does not exist"), (tmp_path, "neither a training run folder")):
        refused = CliRunner().invoke(_app(), ["predict", str(bad)])
        assert refused.exit_code == 2 and message in " ".join(refused.output.split())  # wrapped at any width
        assert "Traceback" not in refused.output


def test_runs_are_deterministic_for_a_seed(lora_run: tuple[TrainConfig, Path], tmp_path: Path) -> None:
    config, out = lora_run
    train(config, tmp_path / "again", progress=False, figures=False)
    first, again = _tensors(out / "final"), _tensors(tmp_path / "again" / "final")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    losses = [r["loss"] for r in read_metrics(out) if r["event"] == "train"]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "again") if r["event"] == "train"]
    train(replace(config, seed=7), tmp_path / "other", progress=False, figures=False)
    other = _tensors(tmp_path / "other" / "final")
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_interruption_gives_the_same_run(tiny_bert: Path, tmp_path: Path, method: str) -> None:
    config = _config(tiny_bert, method=method, max_steps=10, checkpoint_every=4, eval_every=5, track_intruders=False)
    train(config, tmp_path / "straight", progress=False, figures=False)

    def interrupt(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, figures=False, on_step=interrupt)
    assert not (tmp_path / "cut" / "final").exists()
    result = train(config, tmp_path / "cut", resume=True, progress=False, figures=False)
    assert result.steps == 10
    straight, resumed = _tensors(tmp_path / "straight" / "final"), _tensors(tmp_path / "cut" / "final")
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)

    def strip(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds_per_step"} for r in records if r["event"] in ("train", "eval")]

    assert strip(read_metrics(tmp_path / "straight")) == strip(read_metrics(tmp_path / "cut"))


def test_resume_with_other_options_is_refused(lora_run: tuple[TrainConfig, Path]) -> None:
    config, out = lora_run
    with pytest.raises(IntrudimError, match="rank: 2 in the run, 4 now"):
        train(replace(config, rank=4), out, resume=True, progress=False, figures=False)


def test_resuming_a_run_written_before_schedule_and_clipping_existed(tiny_bert: Path, tmp_path: Path) -> None:
    """Such a run trained with the linear schedule and no clipping; resuming must not switch clipping on."""
    config = _config(tiny_bert, max_steps=4)
    out = tmp_path / "old"
    prepare_run_dir(out, config, tiny_bert, resume=False, overwrite=False)
    stored = json.loads((out / "config.json").read_text())
    del stored["schedule"], stored["max_grad_norm"]
    (out / "config.json").write_text(json.dumps(stored))
    with pytest.raises(IntrudimError, match=r"max_grad_norm: None in the run, 1.0 now \(option --max-grad-norm"):
        check_run_dir(out, replace(config, max_grad_norm=1.0), resume=True, overwrite=False)
    with pytest.raises(IntrudimError, match="schedule: 'linear' in the run, 'constant' now"):
        check_run_dir(out, replace(config, schedule="constant", max_grad_norm=None), resume=True, overwrite=False)
    assert check_run_dir(out, replace(config, schedule="linear", max_grad_norm=None), resume=True, overwrite=False)


def test_full_fine_tuning_writes_an_hf_model_and_keeps_embeddings(tiny_bert: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_bert, method="full", max_steps=6, checkpoint_every=3), tmp_path / "full", progress=False, figures=False)
    final = result.final_dir
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert (tmp_path / "full" / "checkpoints/step-3/model.safetensors").is_file()
    tuned, base = _tensors(final), load_file(str(tiny_bert / "model.safetensors"))
    assert torch.equal(tuned["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(tuned[f"bert.{query}"], base[query])
    final_record = next(r for r in read_metrics(tmp_path / "full") if r["event"] == "final")
    assert len(final_record["intruders"]["matrices"]) == 12


def test_multiple_choice_task_trains(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"sentence": f"the dog saw the cat because _ was {w}.", "option1": "dog", "option2": "cat",
             "answer": str(1 + i % 2)} for i, w in enumerate(["big", "small", "near", "far"] * 4)]  # fmt: skip
    data = tmp_path / "wino"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tiny_bert, task="winogrande", data_path=str(data), max_steps=4, checkpoint_every=None,
                     eval_every=2, batch_size=4, track_intruders=False)  # fmt: skip
    result = train(config, tmp_path / "mc", progress=False, figures=False)
    assert result.steps == 4 and 0.0 <= result.final_accuracy <= 1.0
    head = _tensors(result.final_dir)
    assert next(v for k, v in head.items() if "classifier" in k and k.endswith("weight")).shape == (1, 32)


# --- stopping rules and bad input ------------------------------------------------------------------------------


def test_target_accuracy_stops_early(tiny_bert: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_bert, target_accuracy=0.01, track_intruders=False), tmp_path / "t", progress=False, figures=False)
    assert result.stop_reason == "target_reached" and result.reached_target and result.steps == 4
    assert "Reached the target accuracy" in result.message


def test_unreached_target_keeps_best_and_says_so(tiny_bert: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert, target_accuracy=1.0, lr=1e-6, max_steps=8, track_intruders=False)
    result = train(config, tmp_path / "t", progress=False, figures=False)
    assert result.stop_reason == "max_steps" and result.reached_target is False
    assert "was not reached within 8 steps" in result.message and str(tmp_path / "t" / "best") in result.message
    assert (tmp_path / "t" / "best" / "adapter_model.safetensors").is_file()
    assert result.best_step in (4, 8)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert, method="full", checkpoint_every=100, track_intruders=False, max_steps=12)
    holder: dict[str, torch.nn.Module] = {}
    original = build_model

    def capture(*args: object, **kwargs: object):
        parts = original(*args, **kwargs)  # type: ignore[arg-type]
        holder["model"] = parts.model
        return parts

    def corrupt(step: int) -> None:
        if step == 5:
            with torch.no_grad():
                holder["model"].bert.encoder.layer[0].attention.self.query.weight.fill_(float("nan"))

    import intrudim.train.engine as engine

    engine_build = engine.build_model
    engine.build_model = capture  # type: ignore[assignment]
    try:
        with pytest.raises(IntrudimError, match=r"loss became nan at step 6.*step 5.*checkpoints/step-5"):
            train(config, tmp_path / "nan", progress=False, figures=False, on_step=corrupt)
    finally:
        engine.build_model = engine_build  # type: ignore[assignment]
    assert (tmp_path / "nan" / "checkpoints" / "step-5" / "model.safetensors").is_file()
    assert any(r["event"] == "non_finite_loss" and r["step"] == 6 for r in read_metrics(tmp_path / "nan"))


def test_existing_out_directory_is_not_touched(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    config = _config(tiny_bert, max_steps=2, checkpoint_every=None, track_intruders=False)
    with pytest.raises(IntrudimError, match="already exists and is not empty.*--overwrite"):
        train(config, out, progress=False, figures=False)
    with pytest.raises(IntrudimError, match="--overwrite refused.*not an intrudim training run"):
        train(config, out, overwrite=True, progress=False, figures=False)
    with pytest.raises(IntrudimError, match="Nothing to resume"):
        train(config, out, resume=True, progress=False, figures=False)
    assert (out / "precious.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    run = tmp_path / "run"
    train(config, run, progress=False, figures=False)
    with pytest.raises(IntrudimError, match="already exists"):
        train(config, run, progress=False, figures=False)
    assert train(config, run, overwrite=True, progress=False, figures=False).steps == 2


def test_unknown_task_is_refused_before_anything_is_written(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(IntrudimError, match="Unknown task 'nope'"):
        train(_config(tiny_bert, task="nope"), tmp_path / "x", progress=False, figures=False)
    assert not (tmp_path / "x").exists()


# --- sweep and CLI ---------------------------------------------------------------------------------------------


def test_rank_sweep_runs_each_rank_and_full(tiny_bert: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert, max_steps=4, checkpoint_every=None)
    result = rank_sweep(config, tmp_path / "sweep", (1, 4, "full"), progress=False)
    assert list(result.runs) == ["r-1", "r-4", "full"]
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["run"] for row in summary["runs"]] == ["r-1", "r-4", "full"]
    assert all(isinstance(row["intruders"], int) for row in summary["runs"])
    assert json.loads((tmp_path / "sweep" / "r-4" / "config.json").read_text())["rank"] == 4
    assert (tmp_path / "sweep" / "full" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "sweep" / "figures" / "intruders_by_rank.png").is_file()
    prediction = summary["prediction"]  # the final weights of 3 runs x 12 matrices, pressure against intruders
    assert prediction["observations"] == 36 and prediction["runs"] == 3 and len(prediction["per_run"]) == 3
    assert prediction["default"]["threshold"] == DEFAULT_PRESSURE_THRESHOLD
    finals = [next(r for r in read_metrics(tmp_path / "sweep" / run) if r["event"] == "final") for run in result.runs]
    with_intruders = sum(m["intruders"] > 0 for r in finals for m in r["intruders"]["matrices"])
    assert prediction["default"]["found"] == with_intruders
    again = rank_sweep(config, tmp_path / "sweep", (1, 4, "full"), resume=True, progress=False, figures=False)
    assert again.rows() == result.rows()


def _app():
    import typer

    from intrudim.cli.train import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_train_and_errors(tiny_bert: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    common = ["--model", str(tiny_bert), "--task", "topic", "--steps", "3", "--eval-every", "3",
              "--checkpoint-every", "0", "--max-train-examples", "48", "--max-validation-examples", "16",
              "--quiet", "--no-track", "--no-figures"]  # fmt: skip
    ok = runner.invoke(_app(), ["train", *common, "--method", "lora", "--rank", "2", "--alpha", "4",
                                "--schedule", "constant", "--max-grad-norm", "0", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    stored = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (stored["alpha"], stored["alpha_rule"], stored["max_steps"], stored["checkpoint_every"]) == (4.0, "fixed", 3, None)
    assert (stored["schedule"], stored["max_grad_norm"]) == ("constant", None)  # 0 means no clipping
    import torch

    if not torch.cuda.is_available():  # this machine: `--device cuda` is refused before anything is written
        cuda = runner.invoke(_app(), ["train", *common, "--device", "cuda", "--out", str(tmp_path / "gpu")])
        assert cuda.exit_code == 2 and "no CUDA GPU is available here" in " ".join(cuda.output.split())
        assert not (tmp_path / "gpu").exists()
    on_cpu = runner.invoke(_app(), ["train", *common, "--device", "cpu", "--rank", "2", "--out", str(tmp_path / "cpu")])
    assert on_cpu.exit_code == 0, on_cpu.output
    assert not (tmp_path / "cli" / "checkpoints").exists()
    untracked = runner.invoke(_app(), ["predict", str(tmp_path / "cli")])  # --no-track: nothing to score
    assert untracked.exit_code == 2 and "No tracked intruder pressure" in untracked.output
    bad_threshold = runner.invoke(_app(), ["predict", str(tmp_path / "cli"), "--threshold", "0"])
    assert bad_threshold.exit_code == 2 and "--threshold must be > 0" in bad_threshold.output
    again = runner.invoke(_app(), ["train", *common, "--out", str(tmp_path / "cli")])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(_app(), ["train", *common, "--method", "adapter", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "method='adapter' is unknown" in bad.output and "Traceback" not in bad.output
    big = runner.invoke(_app(), ["train", *common, "--rank", "999", "--out", str(tmp_path / "big")])
    assert big.exit_code == 2 and "larger than the matrix" in big.output
    sweep = runner.invoke(_app(), ["sweep", "--model", str(tiny_bert), "--task", "topic", "--ranks", "1,x",
                                   "--out", str(tmp_path / "s")])  # fmt: skip
    assert sweep.exit_code == 2 and "'x' is neither" in sweep.output


def test_cli_sweep_ray_options_are_checked_before_anything_runs(tiny_bert: Path, tmp_path: Path) -> None:
    """Ray itself is tested on a real cluster in test_scan_ray.py; here the options' mistakes, which need no Ray."""
    from typer.testing import CliRunner

    base = ["sweep", "--model", str(tiny_bert), "--ranks", "1", "--steps", "2", "--quiet", "--out", str(tmp_path / "s")]
    for extra, message in (
        (["--ray", "--ray-address", "127.0.0.1:6379"], "not both"),
        (["--ray-cpus-per-run", "2"], "add --ray or --ray-address"),
        (["--ray-address", "headnode"], "--ray-address must be HOST:PORT"),
        (["--ray", "--ray-cpus-per-run", "0"], "--ray-cpus-per-run must be at least 1"),
        (["--device", "tpu"], "--device 'tpu' is unknown for training"),
        (["--ray", "--device", "tpu"], "--device 'tpu' is unknown for training"),
    ):
        result = CliRunner().invoke(_app(), [*base, *extra])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (extra, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_cli_sweep_passes_other_lr_and_recipe_to_every_run(tiny_bert: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_app(), [
        "sweep", "--model", str(tiny_bert), "--task", "topic", "--ranks", "2,full", "--steps", "2",
        "--eval-every", "2", "--total-lr", "6e-3", "--other-lr", "1e-4", "--schedule", "constant",
        "--quiet", "--no-figures", "--out", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "svd"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "svd").iterdir()) and not (tmp_path / "s" / "svd_cache").exists()  # one shared cache
    lora = json.loads((tmp_path / "s" / "r-2" / "config.json").read_text())
    assert (lora["other_lr"], lora["total_lr"], lora["schedule"]) == (1e-4, 6e-3, "constant")
    assert lora["resolved"]["learning_rate"] == pytest.approx(6e-3 / 4)  # α = 2r = 4
    assert json.loads((tmp_path / "s" / "full" / "config.json").read_text())["method"] == "full"


def test_train_and_sweep_share_one_recipe_option_set(tiny_bert: Path, tmp_path: Path) -> None:
    """Every recipe option of `train` exists in `sweep` with the same default (issue 16), and reaches each run."""
    import typer.main
    from typer.testing import CliRunner

    app = _app()
    group = typer.main.get_command(app)
    options = {name: {p.name: p.default for p in group.commands[name].params} for name in ("train", "sweep")}  # type: ignore[attr-defined]
    own = {"train": {"method", "rank"},
           "sweep": {"method", "ranks", "ray", "ray_address", "ray_cpus_per_run", "ray_gpus_per_run",
                     "lrs", "full_lrs", "forgetting_text", "forgetting_tokens"}}  # the map's own (--lrs)  # fmt: skip
    assert {k: v for k, v in options["train"].items() if k not in own["train"]} == {
        k: v for k, v in options["sweep"].items() if k not in own["sweep"]}  # fmt: skip
    assert options["sweep"]["checkpoint_every"] == options["train"]["checkpoint_every"] == 100
    for name in ("lr", "batch_size", "max_train_examples", "max_validation_examples", "track", "cache_dir"):
        assert name in options["sweep"], name

    result = CliRunner().invoke(app, [
        "sweep", "--model", str(tiny_bert), "--task", "topic", "--ranks", "2", "--steps", "2", "--eval-every", "2",
        "--lr", "3e-3", "--batch-size", "8", "--max-train-examples", "40", "--max-validation-examples", "16",
        "--no-track", "--cache-dir", str(tmp_path / "svd"), "--checkpoint-every", "0", "--quiet", "--no-figures",
        "--out", str(tmp_path / "s"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "s" / "r-2" / "config.json").read_text())
    assert (run["lr"], run["batch_size"], run["max_train_examples"], run["max_validation_examples"]) == (3e-3, 8, 40, 16)
    assert run["track_intruders"] is False and run["checkpoint_every"] is None
    start = read_metrics(tmp_path / "s" / "r-2")[0]
    assert (start["train_size"], start["validation_size"]) == (40, 16)
