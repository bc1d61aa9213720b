"""Science check on the embedded MiniLM (Sec. 3 and Fig. 10 of the paper).

At equal task accuracy, LoRA r=1 has clearly more intruder dimensions (k=10, ε=0.5, summed over the 36 block
matrices) than full fine-tuning, and B-only LoRA (A frozen with all singular values 1) has fewer than
standard LoRA of the same rank. Orderings are asserted, not exact numbers.

The paper trains 5 epochs of 10⁴–10⁵ examples (10⁴–10⁵ steps of batch 16); a CPU test has ~300. With the
exact Appendix A recipe the LoRA update of 300 steps stays far below σ₁₀ of MiniLM's matrices and no method
has intruders (docs/train.md, "Science check"). So the LoRA runs here use the *compressed* recipe documented
there: 2.5× the paper's total learning rate (α·η = 6e-3, η = 3e-3 at r=1) held constant after the 6 %
warm-up; full fine-tuning keeps its default η = 1e-4 with the same schedule. Everything else is Appendix A
(α = 2r, AdamW without weight decay, batch 16, gradient clipping at 1.0, all block linears, biases and
LayerNorms trained). Every method gets the same budget (300 steps of ``sentiment``, ~1.2 epochs) and must
reach the target accuracy at the held-out evaluation at its end: the comparison is at equal accuracy.

Measured on a 2-core CPU (seed 0, 2 threads): see the numbers printed by the test and docs/train.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

from intrudim.train import TrainConfig, read_metrics, train

TASK = "sentiment"
TARGET_ACCURACY = 0.95
STEPS = 300
COMPRESSED_TOTAL_LR = 6e-3  # 2.5× Appendix A's α·η = 2.4e-3; see the module docstring


@pytest.fixture()
def two_threads():
    """Results of a seed depend on the thread count (reduction order): pin it to CI's two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_lora_r1_has_more_intruders_than_full_and_b_only_fewer_at_equal_accuracy(
    tmp_path: Path, two_threads: None
) -> None:
    common = dict(
        task=TASK, target_accuracy=TARGET_ACCURACY, max_steps=STEPS, eval_every=STEPS, checkpoint_every=None,
        max_validation_examples=200, seed=0, schedule="constant",
    )  # fmt: skip
    cache = tmp_path / "svd_cache"  # one base SVD for the three runs

    def run(name: str, **method: object):
        config = TrainConfig(**common, **method)  # type: ignore[arg-type]
        return train(config, tmp_path / name, progress=False, cache_dir=cache, figures=False)

    lora = run("lora", method="lora", rank=1, total_lr=COMPRESSED_TOTAL_LR)
    full = run("full", method="full")
    b_only = run("b_only", method="lora-b-only", rank=1, total_lr=COMPRESSED_TOTAL_LR)
    summary = {name: (r.steps, r.final_accuracy, r.final_intruders)
               for name, r in (("lora r=1", lora), ("full", full), ("b-only r=1", b_only))}  # fmt: skip
    print(summary)
    for result in (lora, full, b_only):
        assert result.reached_target, summary  # equal task performance, as in the paper
    assert lora.final_intruders is not None and full.final_intruders is not None and b_only.final_intruders is not None
    assert lora.final_intruders >= 5 and lora.final_intruders >= 3 * full.final_intruders + 5, summary
    assert b_only.final_intruders < lora.final_intruders, summary
    final = next(r for r in read_metrics(tmp_path / "lora") if r["event"] == "final")
    assert len(final["intruders"]["matrices"]) == 36
