"""Science checks on the embedded causal LM (slow, run in CI): what intruders cost, and their repair.

Paper: Sec. 4 / Fig. 9 (LoRA with intruders forgets more of the pre-training distribution) and the v2 abstract
(scaling the intruders' singular values down recovers part of that forgetting at little task cost).

Compressed recipe (docs/repair.md, "Science check"): SmolLM2-135M fine-tuned as a language model on the
generated `sentiment` task (prompt + answer, loss on the answer token), LoRA on all seven projections with
α = 2r and α·η = 2e-2 (8.3× Appendix A's 2.4e-3: at the paper's value 100 steps leave no intruder), linear
schedule with 6% warm-up, 100 steps of batch 8, 32 tokens; r = 1 with seeds 0 and 1, r = 8 with seed 0. The RMSNorm
weights train at η = 1e-5 (``other_lr``, full fine-tuning's rate) for both ranks: at LoRA r=1's η = 1e-2 they
alone made the model forget most of its language (news loss 3.8 → 11.9, untouched by repairing the intruders),
and r=1 and r=8 would differ in that η, not only in rank. Forgetting is the mean next-token loss on 2,048
tokens of the gensim news sample (windows of 128). The orderings asserted
here held for both seeds when this recipe was chosen (numbers in docs/repair.md); they are regressions of one
recipe on CI's 2 CPU threads — another thread count or CPU changes float reduction order and can move the
counts by a few intruders, as docs/train.md measured for MiniLM.

Time (each SmolLM2 run is ~2.5 minutes on 2 cores): the three runs train side by side in worker processes, each
at 2 threads (the same adapters bit for bit as one after the other), r = 8 is trained for seed 0 only, and the
repair sweep measures only the intruder repair (its controls are tested in tests/test_repair_sweep.py and
asserted nothing here), which keeps `make test` under 30 minutes. The r = 1 vs r = 8 comparison had wide margins at both seeds
when the recipe was chosen (docs/repair.md: 6 and 4 intruders against 0; forgetting +16.8 and +11.5 against +0.3
and +0.6). CI runs seed 0 only (issue 27: one seed of each science test in CI; the multi-seed picture is
`intrudim demo --seeds`); seed 1 held the same orderings when the recipe was chosen (`SEEDS = (0, 1)` runs both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import train_in_parallel

from intrudim.evaluate.forgetting import ForgettingProbe
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.repair import RepairConfig
from intrudim.repair.sweep import repair_sweep
from intrudim.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.science]

SEEDS = (0,)  # r = 1 and its repair: CI keeps one seed of each science test (issue 27); seeds are the demo's
COMPARED_SEED = 0  # r = 1 against r = 8
RECIPE = dict(
    model="smollm2", task="sentiment", method="lora", total_lr=2e-2, other_lr=1e-5, schedule="linear", max_steps=100,
    batch_size=8, max_length=32, max_validation_examples=100, eval_every=100, checkpoint_every=None,
)  # fmt: skip
TEXT, TEXT_TOKENS = "news", 2048
REPAIR_LAMBDA = 0.5


class Science:
    """Trains each (rank, seed) once and measures its forgetting; shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: dict[tuple[int, int], dict] = {}
        self.probe = ForgettingProbe.prepare("smollm2", TEXT, ForgettingConfig(max_tokens=TEXT_TOKENS))
        self.base_loss = float(self.probe.losses(self.probe.load_base_model()).mean())

    def train(self, keys: list[tuple[int, int]]) -> None:
        """Train the (rank, seed) runs not trained yet, side by side (conftest.train_in_parallel), and measure
        their forgetting."""
        jobs = {(rank, seed): (TrainConfig(**RECIPE, rank=rank, seed=seed), self.root / f"r{rank}-seed{seed}")
                for rank, seed in keys if (rank, seed) not in self.runs}  # type: ignore[arg-type]  # fmt: skip
        for key, result in train_in_parallel(jobs, self.root / "svd_cache").items():
            model, _ = self.probe.load_tuned_model(result.run_dir / "final")
            loss = float(self.probe.losses(model).mean())
            self.runs[key] = {"run_dir": result.run_dir, "accuracy": result.final_accuracy,
                              "intruders": result.final_intruders, "loss": loss,
                              "forgetting": loss - self.base_loss}  # fmt: skip

    def __call__(self, rank: int, seed: int) -> dict:
        self.train([(rank, seed)])
        return self.runs[(rank, seed)]

    def summary(self) -> str:
        rows = {f"r={r} seed {s}": {k: v for k, v in run.items() if k != "run_dir"} for (r, s), run in self.runs.items()}
        return json.dumps({"base_loss": self.base_loss, "runs": rows}, indent=1)


@pytest.fixture(scope="module")
def science(tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path) -> Iterator[Science]:
    """Results of a seed depend on the thread count (reduction order): the training workers and this process
    (forgetting, repair) are pinned to CI's two cores."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("repair_science")
    previous_cache = os.environ.get("INTRUDIM_CACHE")
    if previous_cache is None:
        os.environ["INTRUDIM_CACHE"] = str(embedded_cache)  # smollm2 converted once for the session
    try:
        science = Science(root)
        science.train([(1, COMPARED_SEED), (8, COMPARED_SEED)] + [(1, seed) for seed in SEEDS])  # all at once
        yield science
    finally:
        torch.set_num_threads(previous_threads)
        if previous_cache is None:
            os.environ.pop("INTRUDIM_CACHE", None)


def test_lora_r1_has_more_intruders_and_forgets_more_than_r8_at_equal_accuracy(science: Science) -> None:
    """Fig. 9's direction: at equal task accuracy, rank 1 has intruders and forgets more than rank 8 (α = 2r)."""
    r1, r8 = science(1, COMPARED_SEED), science(8, COMPARED_SEED)
    summary = science.summary()
    print(summary)
    assert r1["accuracy"] >= 0.95 and r8["accuracy"] >= 0.95, summary  # equal task performance
    assert r1["intruders"] >= 3 and r1["intruders"] > r8["intruders"], summary
    assert r1["forgetting"] > r8["forgetting"], summary
    assert r1["forgetting"] > 0, summary


@pytest.mark.parametrize("seed", SEEDS)
def test_repairing_the_intruders_lowers_forgetting_at_little_task_cost(science: Science, seed: int) -> None:
    """v2: λ = 0.5 on the intruders lowers the loss on the news text, accuracy within 3 points; and at every seed
    LoRA r = 1 reaches the task with intruders and forgets."""
    r1 = science(1, seed)
    assert r1["accuracy"] >= 0.95 and r1["intruders"] >= 3 and r1["forgetting"] > 0, science.summary()
    sweep = repair_sweep(
        "smollm2", r1["run_dir"], (REPAIR_LAMBDA,), ("none",), config=RepairConfig(),
        task="sentiment", text=TEXT, max_tokens=TEXT_TOKENS, max_examples=100, cache_dir=science.root / "svd_cache",
    )  # fmt: skip
    table = json.dumps(sweep.to_json()["points"], indent=1)
    print(science.summary(), table)
    tuned, repaired = sweep.point(1.0, "none"), sweep.point(REPAIR_LAMBDA, "none")
    assert sweep.total_intruders == r1["intruders"], table
    assert tuned.forgetting_loss == pytest.approx(r1["loss"], rel=1e-6), table  # the sweep's λ=1 is the run
    assert repaired.forgetting_loss < tuned.forgetting_loss, table
    assert repaired.accuracy >= tuned.accuracy - 0.03, table
