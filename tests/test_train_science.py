"""Science check on the embedded MiniLM (Sec. 3 and Fig. 10 of the paper), with the recipe of Appendix A.

At equal task accuracy, LoRA r=1 has clearly more intruder dimensions (k=10, ε=0.5, summed over the 36 block
matrices) than full fine-tuning, and B-only LoRA (A frozen with all singular values 1) has fewer than
standard LoRA of the same rank. Orderings are asserted, not exact numbers.

As in the paper, every method gets the same training budget (the paper: at most 5 epochs; here 300 steps of
batch 16, ~1.2 epochs of ``pair-match``) and the runs are compared at equal accuracy: each must reach the
target accuracy at its evaluation (held-out, evaluated at the end of the budget). Evaluating earlier would
stop LoRA r=1 at ~75 steps, before its update has grown into the top singular vectors.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from intrudim.train import TrainConfig, read_metrics, train

TASK = "pair-match"
TARGET_ACCURACY = 0.95
STEPS = 300


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="Known gap (issue 4), not yet reproduced with the Appendix A recipe on MiniLM: at 300 steps on pair-match "
    "(all runs at accuracy >= 0.99) LoRA r=1 0, full FT 0, B-only r=1 0 intruders (min max|cos| 0.97 for LoRA r=1); "
    "at 4x the total learning rate (6e-3) and 600 steps, LoRA r=1 reaches 1 intruder on pair-match and on topic. "
    "Strict: the day the ordering holds, this xfail fails and must be turned into a plain test. "
    "See docs/train.md, 'Science check status'.",
)
def test_lora_r1_has_more_intruders_than_full_and_b_only_fewer_at_equal_accuracy(tmp_path: Path) -> None:
    common = dict(
        task=TASK, target_accuracy=TARGET_ACCURACY, max_steps=STEPS, eval_every=STEPS, checkpoint_every=None,
        max_validation_examples=200, seed=0,
    )  # fmt: skip
    cache = tmp_path / "svd_cache"  # one base SVD for the three runs

    def run(name: str, **method: object):
        config = TrainConfig(**common, **method)  # type: ignore[arg-type]
        return train(config, tmp_path / name, progress=False, cache_dir=cache, figures=False)

    lora = run("lora", method="lora", rank=1)
    full = run("full", method="full")
    b_only = run("b_only", method="lora-b-only", rank=1)
    summary = {name: (r.steps, r.final_accuracy, r.final_intruders)
               for name, r in (("lora r=1", lora), ("full", full), ("b-only r=1", b_only))}  # fmt: skip
    print(summary)
    for result in (lora, full, b_only):
        assert result.reached_target, summary  # equal task performance, as in the paper
    assert lora.final_intruders is not None and full.final_intruders is not None and b_only.final_intruders is not None
    assert lora.final_intruders >= 10 and lora.final_intruders >= 3 * full.final_intruders + 5, summary
    assert b_only.final_intruders < lora.final_intruders, summary
    final = next(r for r in read_metrics(tmp_path / "lora") if r["event"] == "final")
    assert len(final["intruders"]["matrices"]) == 36
