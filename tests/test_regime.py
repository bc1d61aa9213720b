"""`intrudim regime` (issue 27, part 3) on a tiny random LLaMA causal LM: the running-text task's loss is the mean
cross-entropy over the whole target sentence (by hand, and as training logs it), the rule picks the smallest
candidate that reaches the target (planted accuracies), the per-seed decisions and their combination over seeds
(planted measurements), and the whole experiment end to end: its summary, forgetting equal to `intrudim
forgetting`'s, the repair sweep's losses equal to it, the report, the CLI, reuse, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from intrudim.errors import IntrudimError
from intrudim.evaluate.batching import answer_loss, answer_token_ids, encode_candidates, prompt_token_ids
from intrudim.experiments.claims import equal_accuracy
from intrudim.experiments.regime_claims import (
    aggregate,
    at_equal_accuracy,
    decide_seed,
    forgetting_difference,
)
from intrudim.experiments.regime_config import RegimeConfig
from intrudim.experiments.regime_measures import recovered_fraction, recovered_table
from intrudim.experiments.regime_runs import RateChoice, smallest_reaching
from intrudim.tasks import get_task
from intrudim.tasks.generated import running_text_task_specs
from intrudim.tasks.prompts import prompt_format

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and results must not depend on the shared CPU's load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM (tied head, 256 positions: forgetting's 128-token windows fit) with a
    word-level tokenizer covering review-summary and its prompt."""
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_lm")
    words = set("review summary : the reviewer liked disliked and but . ,".split())
    for spec in running_text_task_specs():
        for example in spec.build(seed=0, train_size=300, validation_size=20).train:
            for text, pair in example.choices:
                words.update(f"{text} {pair}".lower().replace(".", " . ").split())
    vocab = SPECIAL + sorted(words - set(SPECIAL))
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer("The reviewer disliked")["input_ids"][1:4] == [vocab.index(w) for w in ("the", "reviewer", "disliked")]
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, tie_word_embeddings=True,
    )).save_pretrained(str(folder))  # fmt: skip
    return folder


# --- the running-text task: its loss is over every token of the target sentence --------------------------------


def _by_hand(model: torch.nn.Module, tokenizer: object, examples, kind: str) -> float:
    """Mean −log p(token | all before it) over every token of each right answer, one unpadded sequence at a time."""
    fmt = prompt_format(get_task("review-summary", max_train_examples=1, max_validation_examples=1))
    total, count = 0.0, 0
    for example in examples:
        prompt, answer = fmt.candidates(example, kind)[example.label]
        prompt_ids, answer_ids = prompt_token_ids(tokenizer, prompt), answer_token_ids(tokenizer, answer)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].double(), -1)
        for j, token in enumerate(answer_ids):
            total -= float(log_probs[len(prompt_ids) + j - 1, token])
            count += 1
    return total / count


def test_the_loss_is_the_mean_cross_entropy_over_the_whole_target_sentence(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    task = get_task("review-summary", seed=1, max_train_examples=8, max_validation_examples=2)
    fmt = prompt_format(task)
    examples = task.train[:6]
    right = [fmt.candidates(e, task.kind)[e.label] for e in examples]
    sentences = [answer for _, answer in right]
    assert all(s.startswith(" The reviewer ") and s.endswith(".") for s in sentences)
    encoded = encode_candidates(tokenizer, right, 64)
    # every token of every sentence is scored ("the reviewer liked the X and liked the Y ." is 10 words), no prompt token
    assert encoded.answer_mask.sum(dim=1).tolist() == [len(answer_token_ids(tokenizer, s)) for s in sentences]
    assert min(encoded.answer_mask.sum(dim=1).tolist()) >= 10
    with torch.no_grad():
        loss = float(answer_loss(model, tokenizer, examples, task.kind, fmt, 64))
    assert loss == pytest.approx(_by_hand(model, tokenizer, examples, task.kind), rel=1e-5)


def test_training_logs_that_loss_on_its_first_batch(tiny_lm: Path, tmp_path: Path) -> None:
    """objective causal-lm: the loss of step 1 (before any update; LoRA starts at ΔW = 0) is the whole-sentence mean
    cross-entropy of the first batch's right answers, by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from intrudim.train import TrainConfig, read_metrics, train
    from intrudim.train.recipe import batch_indices, total_training_steps

    config = TrainConfig(model=str(tiny_lm), task="review-summary", objective="causal-lm", method="lora", rank=1,
                         max_steps=1, eval_every=1, checkpoint_every=None, log_every=1, batch_size=4,
                         max_train_examples=32, max_validation_examples=4, seed=3, track_intruders=False)  # fmt: skip
    train(config, tmp_path / "run", progress=False, figures=False)
    logged = next(r["loss"] for r in read_metrics(tmp_path / "run") if r["event"] == "train")
    task = get_task("review-summary", seed=3, max_train_examples=32, max_validation_examples=4)
    _, per_epoch = total_training_steps(config, len(task.train))
    examples = [task.train[i] for i in batch_indices(0, 3, len(task.train), 4, per_epoch)]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    assert logged == pytest.approx(_by_hand(model, tokenizer, examples, task.kind), rel=1e-5)


# --- the rule -----------------------------------------------------------------------------------------------------


def test_the_rule_picks_the_smallest_candidate_that_reaches_the_target_and_trains_no_more() -> None:
    planted = {1e-3: 0.55, 2e-3: 0.9, 4e-3: 0.99, 8e-3: 1.0}
    asked: list[float] = []

    def outcome(lr: float) -> dict:
        asked.append(lr)
        return {"accuracy": planted[lr], "steps": 10}

    chosen, reached, tried = smallest_reaching((8e-3, 4e-3, 1e-3, 2e-3), 0.9, outcome)
    assert (chosen, reached) == (2e-3, True)  # exactly the target counts as reached
    assert asked == [1e-3, 2e-3] and [t["reached"] for t in tried] == [False, True]
    asked.clear()
    chosen, reached, tried = smallest_reaching((1e-3, 2e-3), 0.995, outcome)
    assert (chosen, reached, asked) == (2e-3, False, [1e-3, 2e-3])  # none: the largest, every candidate tried
    choice = RateChoice("lora-r1", (1e-3, 2e-3), tuple({**t, "run_dir": "x"} for t in tried), chosen, reached)
    assert "no candidate reached the target accuracy" in choice.outcome() and "largest" in choice.outcome()
    chosen, reached, _ = smallest_reaching((1e-3,), 0.5, lambda lr: {"accuracy": None, "steps": 0})
    assert (chosen, reached) == (1e-3, False)  # a run with no accuracy did not reach
    rule = RegimeConfig(lrs=(4e-3, 1e-3), target_accuracy=0.85).rule()
    assert "the smallest of 0.001, 0.004 at which LoRA r=1 (α=2) reaches held-out accuracy ≥ 0.85" in rule


def test_bad_settings_are_one_clear_message() -> None:
    for fields, message in (({"seeds": ()}, "--seeds is empty"), ({"seeds": (1, 1)}, "repeats a seed"),
                            ({"high_rank": 1}, "--high-rank 1"), ({"lrs": ()}, "--lrs is empty"),
                            ({"full_lrs": (0.0,)}, "--full-lrs"), ({"target_accuracy": 1.5}, "--target-accuracy"),
                            ({"lambdas": (1.0,)}, "--lambdas needs a λ other than 1"), ({"steps": 0}, "steps=0"),
                            ({"lambdas": (-1.0,)}, "--lambdas")):  # fmt: skip
        with pytest.raises(IntrudimError, match=message):
            RegimeConfig(**fields)  # type: ignore[arg-type]
    assert RegimeConfig(lambdas=(0.5,), lrs=(2e-3, 1e-3, 2e-3)).lambdas == (0.5, 1.0)
    assert RegimeConfig(lrs=(2e-3, 1e-3, 2e-3)).lrs == (1e-3, 2e-3)
    assert RegimeConfig(steps=200, evaluations=3).eval_every == 67


# --- the decisions, per seed and over seeds (planted measurements) -----------------------------------------------


def _forgetting(deltas: dict[str, float], accuracy: dict[str, float] | None = None, noise: float = 0.01) -> dict:
    """A seed's forgetting with per-window losses: base 3.0 per window, each run base + its Δ ± noise."""
    generator = torch.Generator().manual_seed(int(sum(deltas.values()) * 1000) % 10_000)
    base = [3.0] * 40
    rows = {}
    for name, delta in deltas.items():
        jitter = noise * torch.randn(40, generator=generator, dtype=torch.float64)
        windows = [b + delta + float(j - jitter.mean()) for b, j in zip(base, jitter, strict=True)]
        rows[name] = {"delta": delta, "ci95": [delta - 0.01, delta + 0.01], "window_losses": windows,
                      "accuracy": (accuracy or {}).get(name, 0.95), "intruders": 2, "steps": 10}  # fmt: skip
    data = {"measure": "perplexity", "rows": rows}
    from intrudim.experiments.claims import forgetting_regime

    data["regime"] = forgetting_regime(data)
    return data


def _repair(recovered: dict[str, float], lam: float = 0.5) -> dict:
    """A repair sweep of a run that forgot 1 nat: base 3, tuned 4; at λ each method's loss = 4 − its recovered share."""
    points = [{"lambda": 1.0, "method": m, "forgetting_loss": 4.0, "accuracy": 0.95} for m in recovered]
    points += [{"lambda": lam, "method": m, "forgetting_loss": 4.0 - r, "accuracy": 0.94} for m, r in recovered.items()]
    sweep = {"total_intruders": 3, "base_loss": 3.0, "tuned_loss": 4.0, "points": points}
    return {**sweep, "recovered": recovered_table(sweep)}


def test_a_spread_of_exactly_the_tolerance_is_equal_accuracy_despite_float_rounding() -> None:
    """1.00 and 0.95 differ by 0.05000000000000004 in floating point: still at equal accuracy (the first full-size
    regime run reported full FT 1.000 against r=8 0.950 as 'not at equal accuracy'); 0.94 is not."""
    rows = {"full": {"accuracy": 1.0}, "lora-r8": {"accuracy": 0.95}, "lora-r1": {"accuracy": 0.94}}
    assert at_equal_accuracy(rows, ["full", "lora-r8"], 0.9) == (True, "")
    equal, why = at_equal_accuracy(rows, ["full", "lora-r1"], 0.9)
    assert not equal and "within 0.05" in why
    assert equal_accuracy(1.0, 0.95) and not equal_accuracy(1.0, 0.94) and not equal_accuracy(0.95, None)


def test_each_question_is_decided_per_seed_and_combined_over_seeds() -> None:
    config = RegimeConfig(seeds=(0, 1, 2, 3), lambdas=(0.5, 1.0))
    skipped = {"skipped": "the run has no intruder dimensions", "total_intruders": 0}
    plans = {  # seed: (Δ r1, Δ r8, Δ full, accuracies, repair of r1)
        0: ({"lora-r1": 0.30, "lora-r8": 0.10, "full": 0.05}, None, {"none": 0.6, "non-intruder": 0.1, "shrink": 0.3}),
        1: ({"lora-r1": 0.25, "lora-r8": 0.12, "full": 0.40}, None, {"none": 0.2, "non-intruder": 0.1, "shrink": 0.3}),
        2: ({"lora-r1": 0.10, "lora-r8": 0.1005, "full": 0.02}, None, {"none": 0.5, "non-intruder": 0.1, "shrink": 0.2}),
        3: ({"lora-r1": 1.20, "lora-r8": 0.10, "full": 0.05}, {"lora-r8": 0.7}, {"none": 0.5, "non-intruder": 0.6, "shrink": 0.2}),
    }  # fmt: skip
    per_seed = {}
    for seed, (deltas, accuracy, recovered) in plans.items():
        forgetting = _forgetting(deltas, accuracy)
        repairs = {"lora-r1": _repair(recovered), "lora-r8": skipped}
        runs = {name: {"accuracy": row["accuracy"], "steps": 10, "intruders": 2} for name, row in forgetting["rows"].items()}
        per_seed[seed] = {"runs": runs, "forgetting": forgetting, "repairs": repairs,
                          "claims": decide_seed(config, forgetting, repairs, "planted")}  # fmt: skip
    ids = [c["id"] for c in per_seed[0]["claims"]]
    assert ids == ["rank-forgetting", "full-vs-lora-r1", "full-vs-lora-r8", "repair-lora-r1-lambda-0.5",
                   "repair-lora-r8-lambda-0.5"]  # fmt: skip
    rank = {seed: per_seed[seed]["claims"][0] for seed in plans}
    assert [rank[s]["held"] for s in plans] == [True, True, False, None]  # seed 2: a tie; seed 3: r8 below target
    assert "indistinguishable" in rank[2]["reason"] and "not at equal accuracy" in rank[3]["reason"]
    difference = forgetting_difference(per_seed[0]["forgetting"], "lora-r1", "lora-r8")
    assert difference["difference"] == pytest.approx(0.20, abs=1e-9) and difference["ci95"][0] > 0.19
    full_r1 = {seed: per_seed[seed]["claims"][1] for seed in plans}
    assert [full_r1[s]["held"] for s in plans] == [False, True, False, False]
    assert "the opposite: full forgets less than lora-r1" in full_r1[0]["reason"]
    repair = {seed: per_seed[seed]["claims"][3] for seed in plans}
    assert [repair[s]["held"] for s in plans] == [True, False, True, False]
    assert repair[1]["reason"] == "norm-matched shrink recovered as much or more"
    assert repair[0]["numbers"]["recovered"] == {"none": pytest.approx(0.6), "non-intruder": pytest.approx(0.1),
                                                 "shrink": pytest.approx(0.3)}  # fmt: skip
    assert per_seed[0]["claims"][4]["held"] is None and "no intruder" in per_seed[0]["claims"][4]["reason"]
    combined = aggregate(config, per_seed)
    verdicts = {c["id"]: (c["verdict"], c["held_in"], c["measured_in"]) for c in combined["claims"]}
    assert verdicts == {"rank-forgetting": ("fragile", 2, 3), "full-vs-lora-r1": ("fragile", 1, 4),
                        "full-vs-lora-r8": ("fragile", 1, 3), "repair-lora-r1-lambda-0.5": ("fragile", 2, 4),
                        "repair-lora-r8-lambda-0.5": ("not measured", 0, 0)}  # fmt: skip
    r1 = combined["methods"]["lora-r1"]
    assert r1["mean_delta"] == pytest.approx((0.30 + 0.25 + 0.10 + 1.20) / 4)
    low, high = r1["ci95_over_seeds"]
    assert 0.10 <= low < r1["mean_delta"] < high <= 1.20
    assert r1["per_seed"]["3"]["perplexity_ratio"] == pytest.approx(2.718281828 ** 1.2)  # > 2: destructive
    assert r1["destructive_seeds"] == [3] and combined["methods"]["lora-r8"]["destructive_seeds"] == []
    regimes = {c["id"]: c["regime"] for c in combined["claims"]}
    assert regimes["full-vs-lora-r8"]["destructive_seeds"] == []
    assert "non-destructive (ratio ≤ 2) in every seed" in regimes["full-vs-lora-r8"]["text"]
    assert regimes["rank-forgetting"]["destructive_seeds"] == [3]
    assert "lora-r1 ×1.11–3.32" in regimes["rank-forgetting"]["text"]
    assert combined["recovered"]["lora-r1"]["none"]["0.5"]["mean"] == pytest.approx((0.6 + 0.2 + 0.5 + 0.5) / 4)
    assert combined["recovered"]["lora-r8"]["none"]["0.5"]["seeds_measured"] == 0


def test_a_destructive_run_is_named_in_the_regime_of_its_claims() -> None:
    config = RegimeConfig(seeds=(0,), lambdas=(0.5,))
    forgetting = _forgetting({"lora-r1": 0.9, "lora-r8": 0.1, "full": 0.05})  # r1: perplexity × e^0.9 ≈ 2.46 > 2
    repairs = {"lora-r1": _repair({"none": 0.5, "non-intruder": 0.1, "shrink": 0.2}), "lora-r8": _repair({})}
    runs = {name: {"accuracy": 0.95, "steps": 10, "intruders": 2} for name in forgetting["rows"]}
    claims = decide_seed(config, forgetting, repairs, "planted")
    combined = aggregate(config, {0: {"runs": runs, "forgetting": forgetting, "repairs": repairs, "claims": claims}})
    assert combined["methods"]["lora-r1"]["destructive_seeds"] == [0]
    regime = combined["claims"][0]["regime"]
    assert regime["destructive_seeds"] == [0] and "destructive (ratio > 2) in seed 0" in regime["text"]
    assert recovered_fraction(3.0, 4.0, 3.5) == 0.5 and recovered_fraction(3.0, 3.0, 2.0) is None
    assert recovered_fraction(3.0, 4.0, 4.5) == -0.5


# --- end to end ---------------------------------------------------------------------------------------------------


def _cli_args(model: Path, out: Path, **changes: str) -> list[str]:
    options = {"--model": str(model), "--task": "review-summary", "--text": "news", "--seeds": "0,1", "--steps": "6",
               "--evaluations": "2", "--lrs": "0.05", "--full-lrs": "1e-3", "--target-accuracy": "0.01",
               "--high-rank": "2", "--lambdas": "0,0.5,1", "--max-tokens": "512", "--max-examples": "32",
               "--workers": "1"}  # fmt: skip
    options.update(changes)
    return ["regime", "--out", str(out)] + [item for pair in options.items() for item in pair]


@pytest.fixture(scope="module")
def experiment(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, RegimeConfig]:
    """The whole experiment once: 2 seeds, one candidate rate per method, 6-step budget, stopped at the first
    evaluation (target 0.01), repair sweeps at λ = 0, 0.5 (and 1)."""
    from intrudim.experiments.regime import run_regime

    config = RegimeConfig(model=str(tiny_lm), seeds=(0, 1), steps=6, evaluations=2, lrs=(0.05,), full_lrs=(1e-3,),
                          target_accuracy=0.01, high_rank=2, lambdas=(0.0, 0.5), max_tokens=512, max_examples=32)  # fmt: skip
    out = tmp_path_factory.mktemp("regime") / "out"
    summary = run_regime(config, out, progress=False, workers=1, cache_dir=out.parent / "cache")
    return out, summary, config


def test_the_experiment_writes_every_seed_run_measurement_and_the_report(experiment) -> None:
    out, summary, config = experiment
    stored = json.loads((out / "summary.json").read_text())
    assert stored["config"] == config.to_json() and stored["rule"] == config.rule()
    assert json.loads((out / "regime.json").read_text())["rule"] == config.rule()  # written before any run
    for run in ("lora-r1", "full"):
        outcome = stored["rule_outcome"][run]
        assert (outcome["chosen"], outcome["reached"], len(outcome["tried"])) == (config.lrs[0] if run != "full"
                                                                                   else 1e-3, True, 1)  # fmt: skip
    assert stored["chosen"] == {"lora_total_lr": 0.05, "full_lr": 1e-3, "reached": {"lora-r1": True, "full": True}}
    for seed in ("0", "1"):
        runs = stored["per_seed"][seed]["runs"]
        assert list(runs) == ["lora-r1", "lora-r2", "full"]
        for name, run in runs.items():
            assert run["reached_target"] is True and run["steps"] == 3  # stopped at the first evaluation
            trained = json.loads((Path(run["run_dir"]) / "config.json").read_text())
            assert (trained["seed"], trained["objective"], trained["task"]) == (int(seed), "causal-lm", "review-summary")
            if name == "full":
                assert (trained["method"], trained["lr"]) == ("full", 1e-3)
            else:
                assert (trained["method"], trained["rank"], trained["total_lr"]) == ("lora", {"lora-r1": 1, "lora-r2": 2}[name],
                                                                                      0.05)  # fmt: skip
        expected = out / "lr-choice" if seed == "0" else out / "seed-1" / "runs"
        assert Path(runs["lora-r1"]["run_dir"]).parent == expected  # seed 0's r=1 is the rule's own run
        rows = stored["per_seed"][seed]["forgetting"]["rows"]
        assert set(rows) == {"lora-r1", "lora-r2", "full"} and "window_losses" not in rows["full"]
        assert (out / f"seed-{seed}" / "measurements" / "forgetting.json").is_file()
    assert [c["id"] for c in stored["claims"]] == ["rank-forgetting", "full-vs-lora-r1", "full-vs-lora-r2",
                                                   "repair-lora-r1-lambda-0", "repair-lora-r1-lambda-0.5",
                                                   "repair-lora-r2-lambda-0", "repair-lora-r2-lambda-0.5"]  # fmt: skip
    for claim in stored["claims"]:
        assert claim["verdict"] in ("held", "fragile", "not held", "not measured") and claim["measured_in"] <= 2
        assert "tuned / base perplexity" in claim["regime"]["text"]
    assert set(stored["methods"]) == {"lora-r1", "lora-r2", "full"}
    assert sum(stored[k] for k in ("held", "fragile", "not_held", "not_measured")) == len(stored["claims"])
    html = (out / "report.html").read_text()
    assert "The rule that chose the learning rates" in html and 'data-figure="forgetting"' in html
    assert html.count('class="seed-row"') == 2 * len(stored["claims"])


def test_forgetting_is_what_intrudim_forgetting_measures_and_the_repair_sweep_agrees(experiment, tiny_lm: Path) -> None:
    from intrudim.evaluate.forgetting import measure_forgetting
    from intrudim.experiments.regime_measures import forgetting_config

    out, summary, config = experiment
    swept = 0
    for seed in ("0", "1"):
        data = summary["per_seed"][seed]
        for name, run in data["runs"].items():
            alone = measure_forgetting(str(tiny_lm), Path(run["run_dir"]) / "final", forgetting_config(config))
            row = data["forgetting"]["rows"][name]
            assert row["delta"] == pytest.approx(alone.delta, abs=1e-6)
            assert row["ci95"] == pytest.approx(list(alone.ci95), abs=1e-6)
            assert data["forgetting"]["regime"]["perplexity_ratio"][name] == pytest.approx(
                alone.tuned.perplexity / alone.base.perplexity, rel=1e-6)  # fmt: skip
        for name, repair in data["repairs"].items():
            if repair.get("skipped"):
                assert data["runs"][name]["intruders"] == 0
                continue
            swept += 1
            row = data["forgetting"]["rows"][name]
            assert (repair["base_loss"], repair["tuned_loss"]) == pytest.approx((row["base_loss"], row["tuned_loss"]),
                                                                                abs=1e-6)  # fmt: skip
            assert repair["total_intruders"] >= 1 and (out / f"seed-{seed}" / "repair" / name / "report.html").is_file()
            point = next(p for p in repair["points"] if p["method"] == "shrink" and p["lambda"] == 0.0)
            expected = (repair["tuned_loss"] - point["forgetting_loss"]) / (repair["tuned_loss"] - repair["base_loss"])
            assert repair["recovered"]["shrink"]["0"] == pytest.approx(expected)
    assert swept >= 1, "no LoRA run had intruders: the repair sweep was never exercised"


def test_the_cli_reuses_a_finished_experiment_and_refuses_other_settings(experiment, tiny_lm: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from intrudim.cli.app import app

    out, summary, _ = experiment
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    assert len(finished) == 6  # 2 rule runs + seed 0's r=2 + seed 1's three
    done = CliRunner().invoke(app, _cli_args(tiny_lm, out))
    assert done.exit_code == 0, done.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == finished  # nothing retrained
    assert "rule: lora-r1: α·η = 0.05" in done.output and "rank-forgetting" in done.output
    assert "reused from an earlier run" in done.output and "forgetting (seed 1)" in done.output
    again = json.loads((out / "summary.json").read_text())
    assert again["methods"] == json.loads(json.dumps(summary["methods"]))
    written = (out / "summary.json").stat().st_mtime_ns
    done = CliRunner().invoke(app, _cli_args(tiny_lm, out, **{"--steps": "7"}))
    assert done.exit_code == 2 and "holds a regime experiment made with other settings" in done.output
    assert "steps: stored 6, now 7" in done.output and "Traceback" not in done.output
    assert (out / "summary.json").stat().st_mtime_ns == written
    done = CliRunner().invoke(app, _cli_args(tiny_lm, out, **{"--steps": "7", "--task": "no-such-task"}) + ["--overwrite"])
    assert done.exit_code == 2 and "Unknown task 'no-such-task'" in done.output
    assert (out / "summary.json").stat().st_mtime_ns == written  # checked before anything was replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "map.json").write_text("{}")
    done = CliRunner().invoke(app, _cli_args(tiny_lm, other) + ["--overwrite"])
    assert done.exit_code == 2 and "holds no regime experiment" in done.output and (other / "map.json").is_file()


def test_bad_input_is_refused_before_any_training(tiny_lm: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from intrudim.cli.app import app

    for changes, message in (({"--lrs": "1e-3,fast"}, "--lrs: 'fast' is not a positive learning rate"),
                             ({"--lambdas": "0,-1"}, "--lambdas must be a comma-separated list"),
                             ({"--seeds": "0,x"}, "--seeds: 'x' is not a non-negative integer"),
                             ({"--text": "no-such-text"}, "--text 'no-such-text' is not a known text"),
                             ({"--task": "sentimnt"}, "Did you mean 'sentiment'")):  # fmt: skip
        out = tmp_path / "out"
        done = CliRunner().invoke(app, _cli_args(tiny_lm, out, **changes))
        assert done.exit_code == 2, done.output
        assert message in done.output and "Traceback" not in done.output
        assert not out.exists()


def test_the_cli_defaults_are_the_recipe_of_the_config() -> None:
    from typer.main import get_command

    from intrudim.cli.app import app
    from intrudim.cli.regime import _lambdas
    from intrudim.experiments.demo_config import parse_seeds
    from intrudim.train.lr_map import parse_lrs

    params = {p.name: p.default for p in get_command(app).commands["regime"].params}  # type: ignore[attr-defined]
    recipe = RegimeConfig()
    assert parse_seeds(params["seeds"]) == recipe.seeds and _lambdas(params["lambdas"]) == recipe.lambdas
    assert parse_lrs(params["lrs"]) == recipe.lrs and parse_lrs(params["full_lrs"]) == recipe.full_lrs
    for name in ("model", "task", "text", "steps", "evaluations", "target_accuracy", "high_rank", "max_tokens",
                 "max_examples"):  # fmt: skip
        assert params[name] == getattr(recipe, name), name


def test_the_report_renders_in_a_browser(experiment) -> None:
    """report.html opened in headless Chromium: the verdict, the rule, the tables, a row per seed of every question,
    and the forgetting and λ-sweep figures drawn."""
    from browser import check_report, require_browser

    out, summary, _ = experiment
    require_browser()
    page = check_report(out / "report.html", required_selectors=[
        "#verdict", "#rule", "#methods", "#recovered", "#claims", "#claim-rank-forgetting .seed-row[data-seed='1']",
        "img[data-figure='forgetting']", "img[data-figure='recovered']",
    ])  # fmt: skip
    page.assert_ok()
    assert len(page.images) == 2, page
