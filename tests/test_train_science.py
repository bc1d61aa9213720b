"""Science check on the embedded MiniLM (Sec. 3 and Fig. 10 of the paper), over two seeds.

At equal task accuracy, LoRA r=1 has clearly more intruder dimensions (k=10, ε=0.5, summed over the 36 block
matrices) than full fine-tuning, and B-only LoRA (A frozen with all singular values 1) has fewer than
standard LoRA of the same rank. Orderings are asserted, not exact numbers.

The paper trains 5 epochs of 10⁴–10⁵ examples (10⁴–10⁵ steps of batch 16); a CPU test has ~300. With the
exact Appendix A recipe the LoRA update stays far below σ₁₀ of MiniLM's matrices and no method has intruders,
even after the full 5 epochs (1250 steps) of ``sentiment`` (docs/train.md, "Science check"). So the LoRA runs
here use the *compressed* recipe documented there: 2.5× the paper's total learning rate (α·η = 6e-3,
η = 3e-3 at r=1) held constant after the 6 % warm-up; full fine-tuning keeps its default η = 1e-4 with the
same schedule. Everything else is Appendix A (α = 2r, AdamW without weight decay, batch 16, gradient clipping
at 1.0, all block linears, biases and LayerNorms trained). Every method gets the same budget (300 steps of
``sentiment``, ~1.2 epochs) and must reach the target accuracy at the held-out evaluation at its end: the
comparison is at equal accuracy.

One run's count is noisy (docs/train.md has per-seed numbers). The orderings were chosen on two seeds (asserted
per seed where they are robust and on the sum over seeds where one seed is too noisy); CI now runs seed 0 only
(issue 27: one seed of each science test in CI, the multi-seed verdicts are `intrudim demo --seeds`), and
`SEEDS = (0, 1)` brings the second seed back. Full fine-tuning had 0 intruders in every run and checkpoint measured, so it runs with one seed to keep
the test at about 6.5 minutes on 2 cores (~75 s a run) when the runs train one by one; they now train side by
side in worker processes at 2 threads each (conftest.train_in_parallel), with the same results.

How sensitive these checks are to threads and CPU (docs/train.md, "Science check"): a run is deterministic for a
seed only at a fixed torch thread count and CPU, because both change the order of floating-point sums; the test
pins 2 threads, as on CI. Changing the thread count moved counts by about one intruder per run (seeds 0 / 1 with
2 threads: LoRA 6 / 4, B-only 4 / 3; with 1 thread: LoRA 6 / 5, B-only 4 / 3; with today's code at 2 threads:
LoRA 5 / 4, B-only 3 / 5), and another CPU (other BLAS
kernels) can do the same. The LoRA-vs-full assertions have margins of several intruders (full FT had 0 in every
run measured) and survive that; B-only < LoRA summed over the seeds (7 vs 10 then, 8 vs 9 now) is the fragile one: it reverses at
seed 2 and under other fair recipes, so a failure of that test alone on a new machine is first a question about
the machine, not a regression.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from conftest import train_in_parallel

from intrudim.train import TrainConfig, read_metrics
from intrudim.train.result import TrainResult

pytestmark = [pytest.mark.slow, pytest.mark.science]

SEEDS = (0,)  # CI keeps one seed of each science test (issue 27); `SEEDS = (0, 1)` runs the docstring's two
COMPRESSED_TOTAL_LR = 6e-3  # 2.5× Appendix A's α·η = 2.4e-3; see the module docstring
RECIPE = dict(
    task="sentiment", target_accuracy=0.95, max_steps=300, eval_every=300, checkpoint_every=None,
    max_validation_examples=200, schedule="constant",
)  # fmt: skip
METHODS: dict[str, dict[str, object]] = {
    "lora r=1": dict(method="lora", rank=1, total_lr=COMPRESSED_TOTAL_LR),
    "b-only r=1": dict(method="lora-b-only", rank=1, total_lr=COMPRESSED_TOTAL_LR),
    "full": dict(method="full"),
}


class ScienceRuns:
    """Trains each (method, seed) once, on first request, and shares it between the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[tuple[str, int], TrainResult] = {}

    def train(self, keys: list[tuple[str, int]]) -> None:
        """Train the (method, seed) runs not trained yet, side by side (conftest.train_in_parallel)."""
        jobs = {(name, seed): (TrainConfig(**RECIPE, **METHODS[name], seed=seed),  # type: ignore[arg-type]
                               self.root / f"{name.replace(' ', '_').replace('=', '')}-seed{seed}")
                for name, seed in keys if (name, seed) not in self.results}  # fmt: skip
        self.results.update(train_in_parallel(jobs, self.root / "svd_cache"))

    def __call__(self, name: str, seed: int) -> TrainResult:
        self.train([(name, seed)])
        return self.results[name, seed]

    def summary(self) -> dict[str, tuple[int, float | None, int | None]]:
        return {f"{name} seed {seed}": (r.steps, r.final_accuracy, r.final_intruders)
                for (name, seed), r in self.results.items()}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> ScienceRuns:
    """The module's five runs, side by side in worker processes. Results of a seed depend on the thread count
    (reduction order): each worker is pinned to CI's two cores (train_in_parallel's ``threads=2``)."""
    runs = ScienceRuns(tmp_path_factory.mktemp("science"))
    runs.train([("lora r=1", seed) for seed in SEEDS] + [("b-only r=1", seed) for seed in SEEDS] + [("full", 0)])
    return runs


def _intruders(result: TrainResult, summary: object) -> int:
    assert result.reached_target, summary  # equal task performance, as in the paper
    assert result.final_intruders is not None, summary
    return result.final_intruders


@pytest.mark.slow
def test_lora_r1_has_clearly_more_intruders_than_full_fine_tuning_at_equal_accuracy(runs: ScienceRuns) -> None:
    lora = {seed: runs("lora r=1", seed) for seed in SEEDS}
    full = runs("full", 0)
    summary = runs.summary()
    print(summary)
    full_count = _intruders(full, summary)
    lora_counts = [_intruders(result, summary) for result in lora.values()]
    for count in lora_counts:  # every seed: LoRA r=1 has intruders, and more than full fine-tuning
        assert count >= 3 and count >= full_count + 3, summary
    assert sum(lora_counts) >= len(SEEDS) * (3 * full_count + 4), summary  # mean over seeds ≥ 3·full + 4
    final = next(r for r in read_metrics(lora[0].run_dir) if r["event"] == "final")
    assert len(final["intruders"]["matrices"]) == 36


@pytest.mark.slow
def test_b_only_lora_has_fewer_intruders_than_lora_of_the_same_rank_summed_over_seeds(runs: ScienceRuns) -> None:
    results = {(name, seed): runs(name, seed) for name in ("lora r=1", "b-only r=1") for seed in SEEDS}
    summary = runs.summary()
    print(summary)
    lora = [_intruders(results["lora r=1", seed], summary) for seed in SEEDS]
    b_only = [_intruders(results["b-only r=1", seed], summary) for seed in SEEDS]
    assert sum(b_only) < sum(lora), summary  # Fig. 10's direction; one seed alone is not robust (docs/train.md)
