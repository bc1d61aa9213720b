"""IntruderCallback inside real training runs (transformers.Trainer, TRL's SFTTrainer, full fine-tuning, two
processes): its logged values reach TensorBoard and ``state.log_history`` and equal ``intrudim.analyze`` of the
checkpoint the Trainer saved at the same step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intrudim.errors import IntrudimError, InvalidConfigError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 128
LEARNING_RATE = 1e-2  # high enough that the tiny random LLaMA gets intruders within a few LoRA steps (17 at step 5)


def tiny_llama_causal():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=1, eos_token_id=2,
                         bos_token_id=3)  # fmt: skip
    return LlamaForCausalLM(config)


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGETS))


def token_dataset(rows: int = 64, length: int = 16):
    from datasets import Dataset

    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def training_arguments(output_dir: Path, **overrides):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=LEARNING_RATE,
                    lr_scheduler_type="constant", report_to="none", use_cpu=True, seed=0, save_only_model=True,
                    disable_tqdm=True, save_strategy="no")  # fmt: skip
    settings.update(overrides)
    return TrainingArguments(**settings)


def assert_same_analysis(record: dict, result) -> None:
    """A timeline record of the callback equals an AnalysisResult of the same weights: counts, ranks, σ, energy share
    and pressure (float tolerance)."""
    assert record["total_intruders"] == result.total_intruders
    assert record["energy_share"] == pytest.approx(result.to_json()["intruder_energy_share_mean"], rel=1e-6, abs=1e-12)
    assert record["by_module_type"] == result.by_module_type()
    live = {m["name"]: m for m in record["matrices"]}
    assert sorted(live) == sorted(m.name for m in result.matrices)
    for matrix in result.matrices:
        mine = live[matrix.name]
        assert mine["intruders"] == matrix.intruders, matrix.name
        assert mine["intruder_ranks"] == matrix.intruder_ranks, matrix.name
        assert mine["singular_values"] == pytest.approx(matrix.singular_values, rel=1e-6)
        assert mine["intruder_energy_share"] == pytest.approx(matrix.intruder_energy_share, rel=1e-6, abs=1e-12)
        assert mine["intruder_pressure"] == pytest.approx(matrix.intruder_pressure, rel=1e-6)
    pressures = [m.intruder_pressure for m in result.matrices]
    assert record["max_pressure"] == pytest.approx(max(pressures), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# LoRA with transformers.Trainer, reported to TensorBoard


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """15 LoRA steps of a tiny LLaMA; analysed, logged and saved every 5 steps; TensorBoard reporting."""
    from transformers import Trainer

    from intrudim.integrations import IntruderCallback

    root = tmp_path_factory.mktemp("lora_run")
    model = tiny_llama_causal()
    model.save_pretrained(root / "base")
    args = training_arguments(root / "out", max_steps=15, logging_steps=5, save_strategy="steps", save_steps=5,
                              report_to="tensorboard")  # fmt: skip
    trainer = Trainer(model=lora(model), args=args, train_dataset=token_dataset())
    callback = IntruderCallback(every_n_steps=5, cache_dir=root / "cache").attach(trainer)
    trainer.train()
    return {"root": root, "trainer": trainer, "callback": callback}


def test_attach_puts_the_callback_before_the_reporters(lora_run):
    from transformers.integrations import TensorBoardCallback

    callbacks = lora_run["trainer"].callback_handler.callbacks
    assert callbacks[0] is lora_run["callback"]
    assert any(isinstance(cb, TensorBoardCallback) for cb in callbacks[1:])


def test_lora_values_reach_tensorboard(lora_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((lora_run["root"] / "out" / "runs").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    timeline = {r["step"]: r for r in lora_run["callback"].timeline}
    assert sorted(timeline) == [5, 10, 15]
    # transformers' reporters prefix training logs with "train/"
    for tag, field in (("train/intrudim/intruders", "total_intruders"), ("train/intrudim/energy_share", "energy_share"),
                       ("train/intrudim/max_pressure", "max_pressure"), ("train/intrudim/step", "step")):  # fmt: skip
        assert tag in tags, tags
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [5, 10, 15]
        for scalar in scalars:
            assert scalar.value == pytest.approx(timeline[scalar.step][field], rel=1e-6)
    per_type = [tag for tag in tags if tag.startswith("train/intrudim/intruders/")]
    assert sorted(per_type) == sorted(f"train/intrudim/intruders/{t}" for t in timeline[15]["by_module_type"])
    assert len(per_type) == 7  # q, k, v, o, gate, up, down
    down = events.Scalars("train/intrudim/intruders/mlp.down_proj")
    assert [s.value for s in down] == [timeline[s.step]["by_module_type"]["mlp.down_proj"] for s in down]
    assert max(r["total_intruders"] for r in timeline.values()) > 0  # the test is not vacuous


def test_lora_values_reach_log_history(lora_run):
    history = lora_run["trainer"].state.log_history
    logged = [h for h in history if "intrudim/intruders" in h]
    assert [h["step"] for h in logged] == [5, 10, 15]
    assert all(h["intrudim/step"] == h["step"] for h in logged)
    assert all("loss" in h for h in logged)  # in the same entries as the training loss
    for h, record in zip(logged, lora_run["callback"].timeline, strict=True):
        assert h["intrudim/intruders"] == record["total_intruders"]
        assert h["intrudim/max_pressure"] == record["max_pressure"]
        assert sum(v for k, v in h.items() if k.startswith("intrudim/intruders/")) == record["total_intruders"]


def test_lora_numbers_equal_the_analysis_of_each_checkpoint(lora_run, tmp_path):
    import intrudim

    root = lora_run["root"]
    for record in lora_run["callback"].timeline:
        checkpoint = root / "out" / f"checkpoint-{record['step']}"
        # A fresh cache: the checkpoint's analysis computes its base SVDs from BASE's files, independently.
        result = intrudim.analyze(str(root / "base"), str(checkpoint), cache_dir=tmp_path / "cache")
        assert result.tuned_kind == "lora"
        assert_same_analysis(record, result)
    last = lora_run["callback"].last_result
    assert last is not None and last.total_intruders == lora_run["callback"].timeline[-1]["total_intruders"]


def test_lora_writes_timeline_and_figure(lora_run):
    out = lora_run["root"] / "out"
    document = json.loads((out / "intrudim_timeline.json").read_text())
    assert document["k"] == 10 and document["epsilon"] == 0.5
    assert document["tuned_kind"] == "lora" and document["adapter_name"] == "default"
    assert "LoRA layer" in document["base"]
    assert [r["step"] for r in document["steps"]] == [5, 10, 15]
    assert document["steps"] == lora_run["callback"].timeline
    assert document["cold_fill"]["matrices"] == 14
    first = document["steps"][0]["matrices"][0]
    assert {"name", "intruders", "intruder_ranks", "intruder_energy_share", "intruder_pressure"} <= set(first)
    png = out / "intrudim_intruders.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind


# --------------------------------------------------------------------------------------------------------------
# TRL's SFTTrainer


def tiny_tokenizer():
    """A word-level tokenizer built here (nothing downloaded): <unk>, <pad>, <eos>, <bos> and 124 words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(VOCAB - 4)]
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, "<bos>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>", bos_token="<bos>")  # fmt: skip
    return tokenizer, words


def test_sft_trainer_values_reach_log_history_and_equal_the_checkpoint(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import intrudim
    from intrudim.integrations import IntruderCallback

    tokenizer, words = tiny_tokenizer()
    generator = torch.Generator().manual_seed(1)
    texts = [" ".join(words[j] for j in torch.randint(0, len(words), (12,), generator=generator).tolist())
             for _ in range(32)]  # fmt: skip
    model = tiny_llama_causal()
    model.save_pretrained(tmp_path / "base")
    # Analysed every 3 steps, logged every 2: each analysis reaches the next log, with the step it was measured at.
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                     learning_rate=LEARNING_RATE, lr_scheduler_type="constant", logging_steps=2,
                     save_strategy="steps", save_steps=3, save_only_model=True, report_to="none", use_cpu=True,
                     seed=0, max_length=32, disable_tqdm=True)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGETS))  # fmt: skip
    callback = IntruderCallback(every_n_steps=3, cache_dir=tmp_path / "cache").attach(trainer)
    trainer.train()
    logged = [(h["step"], h["intrudim/step"], h["intrudim/intruders"]) for h in trainer.state.log_history
              if "intrudim/intruders" in h]  # fmt: skip
    steps = {r["step"]: r["total_intruders"] for r in callback.timeline}
    assert sorted(steps) == [3, 6]
    assert logged == [(4, 3, steps[3]), (6, 6, steps[6])]
    assert steps[6] > 0
    for step in (3, 6):
        result = intrudim.analyze(str(tmp_path / "base"), str(tmp_path / "out" / f"checkpoint-{step}"),
                                  cache_dir=tmp_path / "cli-cache")  # fmt: skip
        assert_same_analysis(next(r for r in callback.timeline if r["step"] == step), result)


# --------------------------------------------------------------------------------------------------------------
# Full fine-tuning, stopping, the pressure warning


def test_full_fine_tuning_equals_the_dense_checkpoint(tmp_path):
    from transformers import Trainer

    import intrudim
    from intrudim.integrations import IntruderCallback

    model = tiny_llama_causal()
    model.save_pretrained(tmp_path / "base")
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    args = training_arguments(tmp_path / "out", max_steps=6, logging_steps=3, save_strategy="steps", save_steps=3,
                              learning_rate=3e-3)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=token_dataset())
    callback = IntruderCallback(every_n_steps=3, cache_dir=tmp_path / "cache").attach(trainer)
    trainer.train()
    assert not torch.equal(before, model.model.layers[0].mlp.down_proj.weight)  # W₀ was copied: training changed it
    document = json.loads((tmp_path / "out" / "intrudim_timeline.json").read_text())
    assert document["tuned_kind"] == "dense" and "copied at train begin" in document["base"]
    assert [r["step"] for r in callback.timeline] == [3, 6]
    assert callback.timeline[0]["matrices_analysed"] == 14
    assert callback.timeline[-1]["total_intruders"] > 0  # full fine-tuning of a random tiny model at this rate
    for record in callback.timeline:
        result = intrudim.analyze(str(tmp_path / "base"), str(tmp_path / "out" / f"checkpoint-{record['step']}"),
                                  cache_dir=tmp_path / "cli-cache")  # fmt: skip
        assert result.tuned_kind == "dense"
        assert_same_analysis(record, result)
    logged = [h for h in trainer.state.log_history if "intrudim/intruders" in h]
    assert [h["intrudim/step"] for h in logged] == [3, 6]


def test_resumed_full_fine_tuning_measures_against_the_pretrained_folder(tmp_path):
    """A run resumed from checkpoint-3: W₀ is read from the folder the model was loaded from (its weights now are the
    checkpoint's), and the timeline continues the one the first run wrote."""
    from transformers import LlamaForCausalLM, Trainer

    import intrudim
    from intrudim.integrations import IntruderCallback

    tiny_llama_causal().save_pretrained(tmp_path / "base")
    for resume in (None, str(tmp_path / "out" / "checkpoint-3")):
        model = LlamaForCausalLM.from_pretrained(tmp_path / "base")
        args = training_arguments(tmp_path / "out", max_steps=6, logging_steps=3, save_strategy="steps", save_steps=3,
                                  save_only_model=False, learning_rate=3e-3)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=token_dataset())
        callback = IntruderCallback(every_n_steps=3, cache_dir=tmp_path / "cache").attach(trainer)
        if resume is None:
            trainer.args.max_steps = 3  # the first run stops at step 3 (a checkpoint with the optimizer's state)
        trainer.train(resume_from_checkpoint=resume)
        assert [r["step"] for r in callback.timeline] == [3, 6][: 1 if resume is None else 2]
    document = json.loads((tmp_path / "out" / "intrudim_timeline.json").read_text())
    assert document["base"].startswith(f"the pre-trained weights in {tmp_path / 'base'}")
    assert [r["step"] for r in document["steps"]] == [3, 6]
    result = intrudim.analyze(str(tmp_path / "base"), str(tmp_path / "out" / "checkpoint-6"), cache_dir=tmp_path / "cache")
    assert_same_analysis(document["steps"][-1], result)
    assert document["steps"][-1]["total_intruders"] > 0


def test_stop_above_zero_stops_training_at_the_first_intruder(tmp_path, capfd):
    from transformers import Trainer

    from intrudim.integrations import IntruderCallback

    args = training_arguments(tmp_path / "out", max_steps=30, logging_steps=1)
    trainer = Trainer(model=lora(tiny_llama_causal()), args=args, train_dataset=token_dataset())
    callback = IntruderCallback(every_n_steps=1, stop_above=0, use_cache=False).attach(trainer)
    trainer.train()
    first = next(r["step"] for r in callback.timeline if r["total_intruders"] > 0)
    assert callback.stopped_at == first == trainer.state.global_step < 30
    assert all(r["total_intruders"] == 0 for r in callback.timeline[:-1])
    document = json.loads((tmp_path / "out" / "intrudim_timeline.json").read_text())
    assert document["stopped"] == {"step": first, "stop_above": 0}
    assert document["cold_fill"]["cache_dir"] is None
    err = capfd.readouterr().err
    assert err.count("exceed stop_above=0") == 1
    assert "no disk cache" in err


def test_pressure_warning_before_any_intruder(tmp_path):
    """A planted update along each base matrix's top singular direction, σ₁(ΔW) = σ_k(W₀): pressure 1 (above 0.85),
    yet no intruder (the top vector stays the base's own); learning rate 0 keeps it there for the one step."""
    from transformers import Trainer

    from intrudim.integrations import IntruderCallback, IntruderPressureWarning

    model = lora(tiny_llama_causal())
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                W0 = module.base_layer.weight.to(torch.float64)
                U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
                scale = module.scaling["default"]
                A = torch.zeros_like(module.lora_A["default"].weight)  # (r, in)
                B = torch.zeros_like(module.lora_B["default"].weight)  # (out, r)
                A[0] = Vh[0].to(A.dtype)
                B[:, 0] = (U[:, 0] * S[9] / scale).to(B.dtype)
                module.lora_A["default"].weight.copy_(A)
                module.lora_B["default"].weight.copy_(B)
    args = training_arguments(tmp_path / "out", max_steps=1, logging_steps=1, learning_rate=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=token_dataset())
    callback = IntruderCallback(every_n_steps=1, use_cache=False).attach(trainer)
    with pytest.warns(IntruderPressureWarning, match="intruder pressure") as caught:
        trainer.train()
    assert len([w for w in caught if issubclass(w.category, IntruderPressureWarning)]) == 1
    record = callback.timeline[-1]
    assert record["total_intruders"] == 0
    assert record["max_pressure"] == pytest.approx(1.0, rel=1e-4)


# --------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be a positive integer"),
        ({"every_n_steps": 2.5}, "every_n_steps must be a positive integer"),
        ({"epsilon": 1.5}, r"epsilon must be in \(0, 1\]"),
        ({"epsilon": 0.0}, r"epsilon must be in \(0, 1\]"),
        ({"epsilon": "0.5"}, "epsilon must be a number"),
        ({"k": 0}, "k must be a positive integer"),
        ({"stop_above": -1}, "stop_above must be None or a non-negative integer"),
        ({"modules": "(unclosed"}, "modules is not a valid regular expression"),
        ({"warn_on_pressure": "yes"}, "warn_on_pressure must be True or False"),
        ({"device": "tpu"}, "device must be 'cpu' or 'cuda"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    from intrudim.integrations import IntruderCallback

    with pytest.raises(InvalidConfigError, match=match):
        IntruderCallback(**kwargs)


def test_attach_to_something_that_is_not_a_trainer():
    from intrudim.integrations import IntruderCallback, NotATrainerError

    with pytest.raises(NotATrainerError, match="needs a transformers.Trainer.*got a LlamaForCausalLM"):
        IntruderCallback().attach(tiny_llama_causal())
    assert issubclass(NotATrainerError, IntrudimError) and issubclass(NotATrainerError, TypeError)


def test_added_without_attach_still_fills_log_history_and_says_why_trackers_miss_it(tmp_path):
    from transformers import Trainer

    from intrudim.integrations import IntruderCallback

    callback = IntruderCallback(every_n_steps=2, use_cache=False)
    trainer = Trainer(model=lora(tiny_llama_causal()), args=training_arguments(tmp_path, max_steps=2, logging_steps=2),
                      train_dataset=token_dataset(), callbacks=[callback])  # fmt: skip
    with pytest.warns(UserWarning, match=r"without \.attach\(trainer\)"):
        trainer.train()
    assert [h["intrudim/step"] for h in trainer.state.log_history if "intrudim/step" in h] == [2]


def test_adapter_name_without_a_peft_model_is_a_clear_error(tmp_path):
    from transformers import Trainer

    from intrudim.integrations import IntruderCallback

    trainer = Trainer(model=tiny_llama_causal(), args=training_arguments(tmp_path, max_steps=1),
                      train_dataset=token_dataset())  # fmt: skip
    IntruderCallback(adapter_name="default", use_cache=False).attach(trainer)
    with pytest.raises(IntrudimError, match="adapter_name='default' was given, but the model .* not a peft PeftModel"):
        trainer.train()


# --------------------------------------------------------------------------------------------------------------
# Two processes (DDP on the CPU, gloo)

DISTRIBUTED_SCRIPT = '''
import json, sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from intrudim.integrations import IntruderCallback

root = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=128)
model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=4, target_modules={targets!r}))
ids = torch.randint(0, 128, (64, 16), generator=torch.Generator().manual_seed(0)).tolist()
args = TrainingArguments(output_dir=str(root / "out"), max_steps=30, per_device_train_batch_size=4, learning_rate=1e-2,
                         lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
                         use_cpu=True, seed=0, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({{"input_ids": ids, "labels": ids}}))
callback = IntruderCallback(every_n_steps=1, stop_above=0, cache_dir=root / "cache").attach(trainer)
trainer.train()
rank = trainer.args.process_index
(root / f"rank{{rank}}.json").write_text(json.dumps({{
    "world_size": trainer.args.world_size, "prepared": callback.cold_fill is not None,
    "analysed": len(callback.timeline), "global_step": trainer.state.global_step,
    "logged": [h["intrudim/intruders"] for h in trainer.state.log_history if "intrudim/intruders" in h],
}}))
# leave as torchrun scripts should: every rank past its writes, then the process group closed (a gloo group left to
# interpreter shutdown can abort a rank with 'terminate called without an active exception')
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_only_rank_zero_analyses_and_both_stop_together(tmp_path):
    """torchrun, 2 CPU processes (DDP over gloo): rank 0 prepares, analyses, logs and writes; rank 1 does nothing but
    receive the decision to stop, so both leave the loop at the same step (a hang would time out)."""
    script = tmp_path / "train_two.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(targets=LORA_TARGETS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["prepared"] and rank0["analysed"] >= 1 and rank0["logged"]
    assert not rank1["prepared"] and rank1["analysed"] == 0 and rank1["logged"] == []
    assert rank0["global_step"] == rank1["global_step"] == rank0["analysed"] < 30  # stopped together, early
    document = json.loads((tmp_path / "out" / "intrudim_timeline.json").read_text())
    assert len(document["steps"]) == rank0["analysed"]
    assert document["stopped"]["step"] == rank0["global_step"]
    assert done.stderr.count("base SVDs of 14 matrices") == 1  # one cold fill, on rank 0
    assert done.stderr.count("exceed stop_above=0") == 1
