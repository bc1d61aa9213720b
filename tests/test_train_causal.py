"""Causal-LM fine-tuning (issue 13) on tiny random LLaMA models built in the test.

Numerical-parity tests: the answer-only loss and the answer log-likelihoods equal a hand computation, one
unpadded sequence at a time; the fast single-token path equals the generic one; accuracy picks the label of
highest likelihood on a planted model; the saved adapter loads in peft and its merge is what `analyze` reads;
a resumed run continues exactly.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import dense_reference
from safetensors.torch import load_file
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.evaluate.accuracy import count_correct
from intrudim.evaluate.batching import (
    answer_log_likelihoods,
    answer_loss,
    answer_token_ids,
    candidate_scores,
    encode_candidates,
    prompt_token_ids,
)
from intrudim.models.loading import is_causal_lm
from intrudim.tasks import get_task
from intrudim.tasks.base import Example, Task
from intrudim.tasks.generated import generated_task_specs
from intrudim.tasks.prompts import PromptFormat, default_prompt_format, prompt_format
from intrudim.train import TrainConfig, rank_sweep, read_metrics, train
from intrudim.train.methods import build_model, orthonormal_rows
from intrudim.train.run_dir import CONFIG_FILE

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEMPLATE_WORDS = "review sentiment words topic animals question answer first second same opinion very good : ? \n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and results must not depend on the shared CPU's load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _save_tokenizer(folder: Path) -> int:
    """A word-level tokenizer covering the generated tasks and the prompt templates."""
    from transformers import BertTokenizerFast

    words: set[str] = set(TEMPLATE_WORDS.split())
    for spec in generated_task_specs():
        for example in spec.build(seed=0, train_size=200, validation_size=20).train:
            for text, pair in example.choices:
                words.update(f"{text} {pair or ''}".split())
    words.update("a b c d e f g h i j k l m n o p q r s t u v w x y z . , ; ' _ ?".split())
    vocab = SPECIAL + sorted(words - set(SPECIAL))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer("the movie")["input_ids"][1:3] == [vocab.index("the"), vocab.index("movie")]  # not [UNK]
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _llama(vocab_size: int, tie: bool = True) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=tie,
    ))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM with tied LM head and embeddings, like SmolLM2."""
    folder = tmp_path_factory.mktemp("tiny_causal")
    _llama(_save_tokenizer(folder)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def loaded(tiny_causal: Path) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal)).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_causal))


def _config(model: Path, **overrides: object) -> TrainConfig:
    fields: dict[str, object] = dict(
        model=str(model), task="sentiment", method="lora", rank=2, max_steps=8, eval_every=4, checkpoint_every=4,
        max_train_examples=64, max_validation_examples=24, eval_batch_size=24, max_length=32, log_every=2, lr=5e-3,
    )  # fmt: skip
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


def _by_hand(model: nn.Module, tokenizer: object, prompt: str, answer: str) -> list[float]:
    """log p(answer token | everything before it), one unpadded sequence, the full logits: the reference."""
    prompt_ids, answer_ids = prompt_token_ids(tokenizer, prompt), answer_token_ids(tokenizer, answer)
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = len(prompt_ids)
    return [float(log_probs[start + j - 1, token]) for j, token in enumerate(answer_ids)]


# --- prompts ----------------------------------------------------------------------------------------------------


def test_every_task_has_one_answer_per_label_and_candidates_in_label_order() -> None:
    for spec in generated_task_specs():
        task = spec.build(seed=0, train_size=4, validation_size=2)
        fmt = prompt_format(task)
        assert fmt.answers is not None and len(fmt.answers) == task.num_labels
        example = task.train[0]
        candidates = fmt.candidates(example, task.kind)
        assert [answer for _, answer in candidates] == list(fmt.answers)
        assert len({prompt for prompt, _ in candidates}) == 1 and example.choices[0][0] in candidates[0][0]
    sentiment = get_task("sentiment", max_train_examples=2, max_validation_examples=2)
    assert prompt_format(sentiment).answers == (" negative", " positive")  # label 0 negative, 1 positive
    mc = Task("winogrande", "multiple_choice", ("option1", "option2"),
              (Example((("The cup broke because", "Ann dropped it."), ("The cup broke because", "Bob sang.")), 0),),
              ())  # fmt: skip
    assert prompt_format(mc).candidates(mc.train[0], mc.kind) == (
        ("The cup broke because", " Ann dropped it."), ("The cup broke because", " Bob sang."))  # fmt: skip
    custom = Task("mine", "classification", ("not_duplicate", "duplicate"), mc.train, ())
    assert default_prompt_format(custom).answers == (" not duplicate", " duplicate")
    with pytest.raises(IntrudimError, match="must differ"):
        PromptFormat("{text}", (" yes", " yes"))


def test_encoding_left_pads_keeps_the_answer_and_drops_trailing_specials(loaded) -> None:
    _, tokenizer = loaded
    encoded = encode_candidates(tokenizer, [("review : the movie was good", " very good"), ("a", " bad")], 6)
    ids, mask = encoded.input_ids, encoded.answer_mask
    assert ids.shape == (2, 6) and encoded.answer_tokens == 2
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    assert sep not in ids.tolist()[0] and sep not in ids.tolist()[1]
    assert tokenizer.convert_ids_to_tokens(ids[0, -2:].tolist()) == ["very", "good"]  # the answer survives
    assert tokenizer.convert_ids_to_tokens(ids[0, :4].tolist()) == ["the", "movie", "was", "good"]  # start cut
    assert mask.tolist() == [[False] * 4 + [True] * 2, [False] * 5 + [True]]
    assert encoded.attention_mask.tolist()[1] == [0, 0, 0, 1, 1, 1]  # [CLS] a bad, left-padded
    assert encoded.position_ids.tolist()[1] == [0, 0, 0, 0, 1, 2]


# --- numbers against a hand computation -------------------------------------------------------------------------


def test_answer_loss_is_the_mean_cross_entropy_of_answer_tokens_only(loaded) -> None:
    model, tokenizer = loaded
    fmt = PromptFormat("review : {text}\nsentiment :", (" bad", " very good"))  # answers of 1 and 2 tokens
    examples = [Example((("the movie was great", None),), 1), Example((("i found the book dull , but", None),), 0),
                Example((("honestly the song felt not at all bad and the car was new", None),), 1)]  # fmt: skip
    loss = answer_loss(model, tokenizer, examples, "classification", fmt, max_length=64)
    token_log_probs = [lp for e in examples for lp in _by_hand(model, tokenizer, fmt.prompt(e.choices[0][0], None),
                                                                fmt.answers[e.label])]  # fmt: skip
    assert len(token_log_probs) == 2 + 1 + 2  # prompt tokens are not scored
    assert loss.item() == pytest.approx(-sum(token_log_probs) / len(token_log_probs), abs=1e-5)
    loss.backward()  # it is a training loss: gradients flow
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_scores_are_answer_log_likelihoods_and_the_fast_path_matches(loaded) -> None:
    model, tokenizer = loaded
    task = get_task("topic", max_train_examples=6, max_validation_examples=2)
    fmt = prompt_format(task)  # four one-token answers: the one-forward fast path
    with torch.no_grad():
        fast = candidate_scores(model, tokenizer, task.train, task.kind, fmt, max_length=64)
        flat = [c for e in task.train for c in fmt.candidates(e, task.kind)]
        generic = answer_log_likelihoods(model, encode_candidates(tokenizer, flat, 64)).view(6, 4)
    hand = torch.tensor([[sum(_by_hand(model, tokenizer, p, a)) for p, a in fmt.candidates(e, task.kind)]
                         for e in task.train], dtype=torch.float32)  # fmt: skip
    assert fast.shape == (6, 4)
    assert torch.allclose(fast, hand, atol=1e-5) and torch.allclose(generic, hand, atol=1e-5)
    two_tokens = PromptFormat(fmt.template, (" sports", " food", " very good", " weather"))  # generic path
    with torch.no_grad():
        scores = candidate_scores(model, tokenizer, task.train[:3], task.kind, two_tokens, max_length=64)
    expected = [[sum(_by_hand(model, tokenizer, p, a)) for p, a in two_tokens.candidates(e, task.kind)]
                for e in task.train[:3]]  # fmt: skip
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float32), atol=1e-5)


class _PlantedLM(nn.Module):
    """A 'causal LM' with a known answer: after a prompt holding ``cue`` it gives ``yes`` log-odds +3 over
    ``no``, otherwise −3; it deliberately takes neither position_ids nor logits_to_keep."""

    def __init__(self, vocab: int, cue: int, yes: int, no: int) -> None:
        super().__init__()
        self.vocab, self.cue, self.yes, self.no = vocab, cue, yes, no

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):  # noqa: D401
        logits = torch.zeros(*input_ids.shape, self.vocab)
        seen = torch.cumsum((input_ids == self.cue).long(), dim=1) > 0  # the cue appeared at or before t
        logits[..., self.yes] = torch.where(seen, 3.0, -3.0)
        return type("Output", (), {"logits": logits})()


def test_accuracy_picks_the_label_of_highest_likelihood_on_a_planted_model(loaded) -> None:
    _, tokenizer = loaded
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("great", "good", "bad")}
    model = _PlantedLM(tokenizer.vocab_size, ids["great"], ids["good"], ids["bad"])
    fmt = PromptFormat("review : {text}\nsentiment :", (" bad", " good"))
    examples = [Example((("the movie was great", None),), 1), Example((("the movie was dull", None),), 0),
                Example((("the great meal", None),), 0), Example((("the dull meal", None),), 0)]  # fmt: skip
    scores = candidate_scores(model, tokenizer, examples, "classification", fmt, max_length=32)
    log_z = torch.logsumexp(torch.tensor([3.0] + [0.0] * (tokenizer.vocab_size - 1)), 0)
    assert float(scores[0, 1]) == pytest.approx(3.0 - float(log_z), abs=1e-5)
    assert scores.argmax(dim=1).tolist() == [1, 0, 1, 0]
    assert count_correct(model, tokenizer, examples, "classification", prompt_format=fmt, batch_size=3) == (3, 4)


# --- training runs ----------------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_causal_lm_is_detected_and_trained_without_a_head(tiny_causal: Path) -> None:
    assert is_causal_lm(tiny_causal)
    parts = build_model(_config(tiny_causal), tiny_causal, head_outputs=2)
    assert parts.objective == "causal-lm"
    assert {name.rsplit(".", 1)[-1] for name in parts.target_modules} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # fmt: skip
    trainable = _trainable(parts.model)
    assert all("lora_" in n or "norm" in n for n in trainable)  # LoRA factors and the RMSNorms (App. A)
    assert any("input_layernorm" in n for n in trainable) and any("model.norm" in n for n in trainable)
    assert not any("embed" in n or "lm_head" in n or "score" in n for n in trainable)
    assert parts.model.peft_config["default"].task_type == "CAUSAL_LM"
    full = build_model(_config(tiny_causal, method="full"), tiny_causal, head_outputs=2)
    frozen = {n for n, p in full.model.named_parameters() if not p.requires_grad}
    assert frozen == {"model.embed_tokens.weight"}  # the tied LM head is the same tensor
    assert full.model.lm_head.weight is full.model.model.embed_tokens.weight
    classification = build_model(_config(tiny_causal, objective="classification"), tiny_causal, head_outputs=2)
    assert classification.objective == "classification" and any("score" in n for n in _trainable(classification.model))


def test_lora_variants_on_a_causal_lm(tiny_causal: Path) -> None:
    rs = build_model(_config(tiny_causal, rank=4, alpha_rule="rslora"), tiny_causal, 2).model
    assert rs.peft_config["default"].use_rslora and rs.peft_config["default"].lora_alpha == 8.0
    q = rs.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8.0 / 2.0)  # α/√r
    fixed = build_model(_config(tiny_causal, rank=4, alpha=16.0), tiny_causal, 2).model
    assert fixed.base_model.model.model.layers[0].mlp.up_proj.scaling["default"] == pytest.approx(4.0)
    b_only = build_model(_config(tiny_causal, method="lora-b-only", rank=3), tiny_causal, 2).model
    a = b_only.base_model.model.model.layers[1].mlp.down_proj.lora_A["default"].weight  # (r, in)
    assert not a.requires_grad and torch.allclose(a @ a.T, torch.eye(3), atol=1e-5)
    assert orthonormal_rows(3, 48, torch.Generator().manual_seed(0)).shape == (3, 48)


@pytest.fixture(scope="module")
def causal_run(tiny_causal: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    config = _config(tiny_causal, rank=2, lr=2e-2)
    out = tmp_path_factory.mktemp("causal") / "lora"
    train(config, out, progress=False, figures=False)
    return config, out


def test_run_records_the_objective_and_the_loss_falls(causal_run: tuple[TrainConfig, Path]) -> None:
    _, out = causal_run
    stored = json.loads((out / CONFIG_FILE).read_text())
    assert stored["objective"] == "causal-lm" and "LM head" in stored["head"]
    records = read_metrics(out)
    assert records[0]["objective"] == "causal-lm"
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert [r["step"] for r in records if r["event"] == "checkpoint"] == [4, 8]
    assert all(r["intruders"]["matrices"] for r in records if r["event"] == "checkpoint")


def test_final_adapter_loads_in_peft_and_its_merge_is_what_analyze_reads(
    causal_run: tuple[TrainConfig, Path], tiny_causal: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, out = causal_run
    final = out / "final"
    assert json.loads((final / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_causal)), str(final)).eval()
    task = get_task("sentiment", seed=config.seed, max_train_examples=64, max_validation_examples=24)
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    correct, total = count_correct(peft_model, tokenizer, task.validation, task.kind, max_length=32,
                                   prompt_format=prompt_format(task))  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    assert correct / total == pytest.approx(result["final_accuracy"])  # the saved adapter is the trained model

    merged = peft_model.merge_and_unload().state_dict()
    base = load_file(str(tiny_causal / "model.safetensors"))
    final_record = next(r for r in read_metrics(out) if r["event"] == "final")
    tracked = {m["name"]: m for m in final_record["intruders"]["matrices"]}
    assert len(tracked) == 14 and result["final_intruders"] == sum(m["intruders"] for m in tracked.values())
    for name, matrix in tracked.items():
        reference = dense_reference(base[name], merged[name], 10, 0.5)
        assert torch.allclose(torch.tensor(matrix["max_abs_cos"], dtype=torch.float64), reference["max_cos"], atol=2e-4)
        assert matrix["intruders"] == reference["count"], name
    assert max(float((merged[n] - base[n]).abs().max()) for n in tracked) > 1e-3
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(merged["model.norm.weight"], base["model.norm.weight"])  # norms were trained


def test_analyze_reads_the_run_directory(causal_run: tuple[TrainConfig, Path], tiny_causal: Path) -> None:
    from intrudim.analyze import AnalyzeConfig, analyze

    _, out = causal_run
    result = analyze(str(tiny_causal), str(out), AnalyzeConfig(k=4, similarity_size=1), progress=False,
                     cache_dir=out / "svd_cache")  # fmt: skip
    assert len(result.matrices) == 14


def test_full_fine_tuning_writes_a_causal_lm_folder(tiny_causal: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = train(_config(tiny_causal, method="full", lr=1e-3, max_steps=4, checkpoint_every=None),
                   tmp_path / "full", progress=False, figures=False)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(str(result.final_dir))
    tuned, base = model.state_dict(), load_file(str(tiny_causal / "model.safetensors"))
    assert torch.equal(tuned["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(tuned["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert result.final_intruders is not None


def test_resume_continues_exactly(tiny_causal: Path, tmp_path: Path) -> None:
    config = _config(tiny_causal, max_steps=8, checkpoint_every=4, eval_every=8, track_intruders=False)
    train(config, tmp_path / "straight", progress=False, figures=False)

    def interrupt(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, figures=False, on_step=interrupt)
    with pytest.raises(IntrudimError, match="objective: 'causal-lm' in the run, 'classification' now"):
        train(replace(config, objective="classification"), tmp_path / "cut", resume=True, progress=False, figures=False)
    train(config, tmp_path / "cut", resume=True, progress=False, figures=False)
    straight = load_file(str(tmp_path / "straight" / "final" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "final" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_multiple_choice_and_sweep_on_a_causal_lm(tiny_causal: Path, tmp_path: Path) -> None:
    sweep = rank_sweep(_config(tiny_causal, max_steps=2, eval_every=2, checkpoint_every=None, task="agreement"),
                       tmp_path / "sweep", (1, "full"), progress=False, figures=False)  # fmt: skip
    assert set(sweep.runs) == {"r-1", "full"}
    for name in ("r-1", "full"):
        assert json.loads((tmp_path / "sweep" / name / CONFIG_FILE).read_text())["objective"] == "causal-lm"
        assert sweep.runs[name].final_accuracy is not None


def test_cli_train_takes_the_objective(tiny_causal: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from intrudim.cli.train import register

    app = typer.Typer()
    register(app)
    common = ["--model", str(tiny_causal), "--steps", "2", "--eval-every", "2", "--checkpoint-every", "0",
              "--max-train-examples", "16", "--max-validation-examples", "8", "--quiet", "--no-figures", "--no-track"]
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), *common])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["objective"] == "causal-lm"
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), "--objective", "lm", *common])
    assert bad.exit_code == 2 and "objective='lm' is unknown" in bad.output and not (tmp_path / "bad").exists()


def test_gpt2_conv1d_causal_lm_trains_and_its_adapter_loads(tmp_path: Path) -> None:
    """GPT-2 (Conv1D blocks, absolute positions: left padding needs position_ids) as a language model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    vocab_size = _save_tokenizer(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               pad_token_id=0)).save_pretrained(str(folder))  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    fmt = PromptFormat("review : {text}\nsentiment :", (" bad", " very good"))
    examples = [Example((("the movie was great", None),), 1), Example((("dull", None),), 0)]
    with torch.no_grad():
        scores = candidate_scores(base, tokenizer, examples, "classification", fmt, max_length=32)
    hand = [[sum(_by_hand(base, tokenizer, p, a)) for p, a in fmt.candidates(e, "classification")] for e in examples]
    assert torch.allclose(scores, torch.tensor(hand, dtype=torch.float32), atol=1e-5)  # padding changed nothing

    result = train(_config(folder, max_steps=4, checkpoint_every=None), tmp_path / "run", progress=False, figures=False)
    assert json.loads((result.final_dir / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    loaded_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(folder)), str(result.final_dir))
    task = get_task("sentiment", seed=42, max_train_examples=64, max_validation_examples=24)
    correct, total = count_correct(loaded_model, tokenizer, task.validation, task.kind, max_length=32,
                                   prompt_format=prompt_format(task))  # fmt: skip
    assert correct / total == pytest.approx(result.final_accuracy) and result.final_intruders is not None
