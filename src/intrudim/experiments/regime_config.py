"""What `intrudim regime` runs (issue 27, part 3): the recipe, the rule that chooses its learning rates, the runs.

Forgetting and repair "in the paper's regime": a causal LM fine-tuned as a language model on a task whose target is
running text (the loss over the whole target sentence, as instruction tuning does), at the smallest learning rate
at which LoRA r=1 reaches the task's target accuracy within the step budget, so that r=1, a higher rank (α = 2r) and
full fine-tuning are compared at equal task accuracy. The defaults of :class:`RegimeConfig` are that recipe on the
embedded SmolLM2-135M.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from intrudim.errors import InvalidConfigError
from intrudim.repair.config import check_lambda
from intrudim.repair.sweep_result import DEFAULT_SWEEP

REGIME_FILE = "regime.json"
"""OUT/regime.json: the settings of the experiment in OUT (a second run with the same settings reuses its work)."""
SUMMARY_FILE = "summary.json"
REGIME_KIND = "intrudim-regime"

LORA_LRS: tuple[float, ...] = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
"""Candidate total learning rates α·η of LoRA, ascending: App. A's 2.4e-3 lies between the second and third; the
coarse SmolLM2 map (docs/train.md) found r=1 destructive at 2e-2, above the last."""
FULL_LRS: tuple[float, ...] = (1e-5, 3e-5, 1e-4)
"""Candidate η of full fine-tuning, ascending: App. A's 1e-5 up to the embedded MiniLM's 1e-4."""


def seed_folder(seed: int) -> str:
    return f"seed-{seed}"


def lora_name(rank: int) -> str:
    return f"lora-r{rank}"


FULL = "full"


@dataclass(frozen=True)
class RegimeConfig:
    """Everything that decides a regime experiment; ``regime.json`` in OUT is this, with the rule in words.

    Attributes:
        model: A causal LM: ``"smollm2"`` (default, the embedded SmolLM2-135M) or a local folder. Forgetting is its
            perplexity on ``text``, so a model without an LM head is refused.
        task: A task whose answer is running text (default ``"review-summary"``), trained with the loss over the
            whole answer (``objective="causal-lm"``).
        text: The forgetting text: ``"news"`` (default), ``"wiki"``, a file, a folder of .txt or a saved dataset.
        seeds: The seeds (default 0, 1, 2); the learning rates are chosen on the first.
        steps: The step budget of every run (default 200, batch ``batch_size``); a run stops earlier at the first
            evaluation that reaches ``target_accuracy`` (the methods are compared at equal accuracy, Sec. 3).
        evaluations: Held-out evaluations per run (default 5: every ⌈steps/5⌉ steps and at the last step).
        lrs: LoRA's candidate total learning rates α·η, tried in ascending order (default 1e-3 … 1.6e-2).
        full_lrs: Full fine-tuning's candidate η, tried in ascending order (default 1e-5, 3e-5, 1e-4).
        target_accuracy: The task's target held-out accuracy (default 0.9; the rule and every run stop at it).
        high_rank: The higher LoRA rank compared with r=1, α = 2r (default 8).
        lambdas: The repair sweep's λ values (default 0, 0.25, 0.5, 0.75, 1; 1 is TUNED itself and always added).
        max_tokens: Tokens of ``text`` scored for forgetting (default 4096), in windows of 128 tokens.
        max_examples: Held-out examples of the task (default 100): the target accuracy's and the repair sweep's.
        batch_size: Training batch (default 8: SmolLM2 on 2 cores).
        max_length: Tokens per example (default 64; review-summary's prompt and answer take ≤ 38 of SmolLM2's).
        other_lr: η of LoRA runs' RMSNorms (default 1e-5, the SmolLM2 recipe of docs/repair.md).
        schedule: ``"linear"`` (default, App. A) or ``"constant"``.
    """

    model: str = "smollm2"
    task: str = "review-summary"
    text: str = "news"
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 200
    evaluations: int = 5
    lrs: tuple[float, ...] = LORA_LRS
    full_lrs: tuple[float, ...] = FULL_LRS
    target_accuracy: float = 0.9
    high_rank: int = 8
    lambdas: tuple[float, ...] = DEFAULT_SWEEP
    max_tokens: int = 4096
    max_examples: int = 100
    batch_size: int = 8
    max_length: int = 64
    other_lr: float = 1e-5
    schedule: str = "linear"

    def __post_init__(self) -> None:
        seeds = (self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds)
        if not seeds:
            raise InvalidConfigError("--seeds is empty; give at least one seed, e.g. --seeds 0 or --seeds 0,1,2.")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise InvalidConfigError(f"--seeds: {seed!r} must be a non-negative integer (e.g. --seeds 0,1,2).")
        if len(set(seeds)) != len(seeds):
            raise InvalidConfigError(f"--seeds {','.join(map(str, seeds))} repeats a seed; give each seed once.")
        object.__setattr__(self, "seeds", seeds)
        for name in ("steps", "evaluations", "max_tokens", "max_examples", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"{name}={value!r} must be a positive integer.")
        if isinstance(self.high_rank, bool) or not isinstance(self.high_rank, int) or self.high_rank < 2:
            raise InvalidConfigError(f"--high-rank {self.high_rank!r} must be an integer ≥ 2 (it is compared with r=1).")
        for name, option in (("lrs", "--lrs"), ("full_lrs", "--full-lrs")):
            values = tuple(float(v) for v in getattr(self, name))
            if not values:
                raise InvalidConfigError(f"{option} is empty; give at least one learning rate, e.g. {option} 1e-3.")
            if any(not (math.isfinite(v) and v > 0) for v in values):
                raise InvalidConfigError(f"{option}: every learning rate must be a positive number; got {values}.")
            object.__setattr__(self, name, tuple(sorted(set(values))))  # the rule walks them in ascending order
        if not (isinstance(self.target_accuracy, (int, float)) and 0.0 < self.target_accuracy <= 1.0):
            raise InvalidConfigError(f"--target-accuracy {self.target_accuracy!r} must be in (0, 1], e.g. 0.9.")
        lambdas = tuple(sorted({check_lambda(v, "every value of --lambdas") for v in self.lambdas} | {1.0}))
        if len(lambdas) < 2:
            raise InvalidConfigError("--lambdas needs a λ other than 1 (1 is the tuned model itself), e.g. 0,0.5,1.")
        object.__setattr__(self, "lambdas", lambdas)
        if not (math.isfinite(self.other_lr) and self.other_lr > 0):
            raise InvalidConfigError(f"other_lr={self.other_lr!r} must be a positive number.")
        if self.schedule not in ("linear", "constant"):
            raise InvalidConfigError(f"schedule={self.schedule!r} must be linear or constant.")

    @property
    def eval_every(self) -> int:
        return max(1, math.ceil(self.steps / self.evaluations))

    @property
    def choice_seed(self) -> int:
        """The seed on which the learning rates are chosen: the first."""
        return self.seeds[0]

    @property
    def ranks(self) -> dict[str, int | None]:
        """The three runs of every seed, name → LoRA rank (None: full fine-tuning)."""
        return {lora_name(1): 1, lora_name(self.high_rank): self.high_rank, FULL: None}

    @property
    def run_names(self) -> tuple[str, str, str]:
        """The three runs of every seed: LoRA r=1, LoRA at the higher rank, full fine-tuning."""
        return lora_name(1), lora_name(self.high_rank), FULL

    @property
    def lora_runs(self) -> tuple[str, str]:
        return lora_name(1), lora_name(self.high_rank)

    def rule(self) -> str:
        """The rule that chooses the learning rates, in words (written into regime.json before any run trains)."""
        return (
            f"LoRA's α·η: the smallest of {_rates(self.lrs)} at which LoRA r=1 (α=2) reaches held-out accuracy "
            f"≥ {self.target_accuracy:g} on {self.max_examples} examples of '{self.task}' within {self.steps} steps "
            f"(evaluated every {self.eval_every}), on seed {self.choice_seed}; the rate is then used for r=1 and "
            f"r={self.high_rank} (α=2r) in every seed. Full fine-tuning's η: the smallest of {_rates(self.full_lrs)} "
            f"at which full fine-tuning reaches it the same way. Candidates are trained in ascending order and the "
            f"search stops at the first that reaches the target; when none does, the largest is used, and every "
            f"comparison made at equal accuracy is then not measured."
        )

    def train_config(self, seed: int, run: str, lr: float) -> Any:
        """The TrainConfig of one run: ``run`` is lora-rN or full; ``lr`` is α·η for LoRA, η for full."""
        from intrudim.train.config import TrainConfig

        common: dict[str, Any] = dict(
            model=self.model, task=self.task, objective="causal-lm", max_steps=self.steps, eval_every=self.eval_every,
            target_accuracy=self.target_accuracy, max_validation_examples=self.max_examples, seed=seed,
            batch_size=self.batch_size, max_length=self.max_length, schedule=self.schedule, checkpoint_every=None,
        )  # fmt: skip
        rank = self.ranks[run]
        if rank is None:
            return TrainConfig(method="full", lr=lr, **common)
        return TrainConfig(method="lora", rank=rank, total_lr=lr, other_lr=self.other_lr, **common)

    def settings_json(self) -> dict[str, Any]:
        """What a second run in the same OUT must share to reuse its work: every field but the later seeds."""
        data = self.to_json()
        data["seeds"] = [self.choice_seed]
        return data

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update({key: list(data[key]) for key in ("seeds", "lrs", "full_lrs", "lambdas")})
        data["eval_every"] = self.eval_every
        return data


def _rates(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)
