"""What a demo trains and measures: the two recipes (quick, full) and the user's choice of mode and seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError

DEMO_FILE = "demo.json"


SUMMARY_FILE = "summary.json"


class DemoSettingsError(IntrudimError):
    """--out holds a demo made with other settings."""


@dataclass(frozen=True)
class MapRecipe:
    """A learning-rate × rank map the full demo draws once, on its first seed (issue 27, part 2; docs/train.md):
    one run per (rank, α·η) and full fine-tuning at each of ``full_lrs``, with intruders, accuracy and forgetting.

    ``train``: the other :class:`~intrudim.train.TrainConfig` fields of every run, as (name, value) pairs (the
    dataclass stays hashable); steps and evaluation are ``steps``."""

    model: str
    lrs: tuple[float, ...]
    ranks: tuple[int | str, ...]
    full_lrs: tuple[float, ...]
    steps: int
    forgetting_tokens: int
    train: tuple[tuple[str, Any], ...] = ()
    forgetting_seq_len: int | None = None  # None: the forgetting probe's default window

    def forgetting(self) -> Any:
        """How each run's forgetting is measured: the map's default (news) on ``forgetting_tokens`` tokens."""
        from intrudim.train.lr_map import MAP_FORGETTING

        config = dataclasses.replace(MAP_FORGETTING, max_tokens=self.forgetting_tokens)
        return config if self.forgetting_seq_len is None else dataclasses.replace(config, seq_len=self.forgetting_seq_len)

    @property
    def name(self) -> str:
        """The model's short name ('minilm', or a local folder's last part): OUT/map-NAME and the report's label."""
        return Path(self.model).name

    @property
    def folder(self) -> str:
        """OUT's folder of this map (drawn once, on the demo's first seed): map-NAME."""
        return f"map-{self.name}"

    def train_config(self, seed: int) -> Any:
        from intrudim.train import TrainConfig

        return TrainConfig(model=self.model, max_steps=self.steps, eval_every=self.steps, checkpoint_every=None,
                           seed=seed, **dict(self.train))  # fmt: skip

    def runs(self) -> int:
        """Runs of the map: one per (LoRA rank, α·η) and one per full fine-tuning η."""
        lora = sum(1 for r in self.ranks if r != "full")
        return lora * len(self.lrs) + (len(self.full_lrs) if "full" in self.ranks else 0)


MINILM_MAP = MapRecipe(
    model="minilm", lrs=(1e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2), ranks=(1, 4, 16, 64, "full"), full_lrs=(3e-5, 1e-4, 3e-4),
    steps=150, forgetting_tokens=4096,
    train=(("task", "sentiment"), ("max_length", 32), ("schedule", "constant"), ("max_validation_examples", 200)),
)  # fmt: skip
"""docs/train.md's MiniLM map: the quick demo's recipe (150 steps, 32 tokens, constant) across α·η and ranks."""


@dataclass(frozen=True)
class DemoRecipe:
    """Everything a demo mode trains and measures. Two instances: :data:`QUICK` and :data:`FULL`."""

    name: str
    steps: int  # training steps of each MiniLM run (batch 16)
    max_length: int  # tokens per example
    total_lr: float  # LoRA's α·η (App. A: 2.4e-3; compressed, see docs/demo.md)
    schedule: str
    high_rank: int  # the higher LoRA rank compared with r = 1 (α = 2r)
    validation_examples: int
    checkpoints: int  # tracked checkpoints of the r = 1 run (Fig. 7)
    continual_tasks: tuple[str, ...]
    continual_ranks: tuple[int | str, ...]
    continual_steps: int
    forgetting_model: str  # "minilm" (contrastive objective) or "smollm2" (perplexity)
    forgetting_text: str
    forgetting_tokens: int
    causal_steps: int = 100  # smollm2 runs (full demo): batch 8, 32 tokens, α·η = 2e-2 (docs/repair.md)
    repair_lambda: float = 0.5
    task: str = "sentiment"
    maps: tuple[MapRecipe, ...] = ()  # learning-rate × rank maps, drawn once on the first seed

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUICK = DemoRecipe(
    name="quick", steps=150, max_length=32, total_lr=6e-3, schedule="constant", high_rank=8,
    validation_examples=200, checkpoints=3, continual_tasks=("sentiment", "topic"), continual_ranks=(1, "full"),
    continual_steps=100, forgetting_model="minilm", forgetting_text="news", forgetting_tokens=6000,
)  # fmt: skip


SMOLLM2_RECIPE = dict(
    model="smollm2", task="sentiment", method="lora", total_lr=2e-2, other_lr=1e-5, schedule="linear",
    batch_size=8, max_length=32, max_validation_examples=100,
)  # fmt: skip
"""The causal-LM recipe of docs/repair.md's science check (steps from the demo recipe)."""


SMOLLM2_MAP = MapRecipe(
    model="smollm2", lrs=(2e-3, 6e-3, 2e-2), ranks=(1, 8, "full"), full_lrs=(1e-5,), steps=100, forgetting_tokens=2048,
    train=tuple((key, value) for key, value in SMOLLM2_RECIPE.items() if key not in ("model", "method", "total_lr")),
)  # fmt: skip
"""docs/train.md's coarse SmolLM2 map: the causal recipe above (100 steps) at three α·η, r = 1, 8 and full FT."""


FULL = DemoRecipe(
    name="full", steps=300, max_length=64, total_lr=6e-3, schedule="constant", high_rank=64,
    validation_examples=200, checkpoints=6, continual_tasks=("sentiment", "topic", "pair-match", "agreement"),
    continual_ranks=(1, 8, "full"), continual_steps=150, forgetting_model="smollm2", forgetting_text="news",
    forgetting_tokens=2048, maps=(MINILM_MAP, SMOLLM2_MAP),
)  # fmt: skip


MEASURED_MINUTES: dict[str, tuple[float, float]] = {"quick": (3.5, 0.0), "full": (15.6, 21.0)}
"""Minutes a demo took on 2 CPU cores from nothing (docs/demo.md, "Timings": quick 2026-12-02 on idle cores; full
2026-12-03, seeds 0, 1, 2 in 67.6 min): (per seed, the maps once)."""


def expected_minutes(config: DemoConfig) -> float:
    """About how long ``config`` takes on 2 CPU cores with nothing reused (:data:`MEASURED_MINUTES`)."""
    per_seed, maps = MEASURED_MINUTES[config.recipe.name]
    return per_seed * len(config.seeds or ()) + maps


QUICK_SEEDS: tuple[int, ...] = (0,)
"""The quick demo's default: one seed is what fits `make demo`'s budget (≤ 5 minutes on 2 cores)."""
FULL_SEEDS: tuple[int, ...] = (0, 1, 2)
"""The full demo's default: every claim is decided per seed and reported as held in n / N seeds."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → (0, 1, 2), with a clear message for anything else."""
    seeds: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item.isdigit():
            raise IntrudimError(f"--seeds: '{item}' is not a non-negative integer (e.g. --seeds 0,1,2).")
        seeds.append(int(item))
    return tuple(seeds)


@dataclass(frozen=True)
class DemoConfig:
    """What the user chose: the mode and the seeds. Everything else follows from the recipe.

    ``seeds`` defaults to :data:`QUICK_SEEDS` or :data:`FULL_SEEDS`; every experiment runs once per seed, into
    OUT/seed-S/, and each claim is decided per seed (:func:`intrudim.experiments.claims.combine_seeds`).
    """

    quick: bool = False
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        seeds = self.seeds
        if seeds is None:
            seeds = QUICK_SEEDS if self.quick else FULL_SEEDS
        if isinstance(seeds, int):
            seeds = (seeds,)
        seeds = tuple(seeds)
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise IntrudimError(f"--seeds: {seed!r} must be a non-negative integer (e.g. --seeds 0,1,2).")
        if not seeds:
            raise IntrudimError("--seeds is empty; give at least one seed, e.g. --seeds 0 or --seeds 0,1,2.")
        if len(set(seeds)) != len(seeds):
            raise IntrudimError(f"--seeds {','.join(map(str, seeds))} repeats a seed; give each seed once.")
        object.__setattr__(self, "seeds", seeds)

    @property
    def recipe(self) -> DemoRecipe:
        return QUICK if self.quick else FULL

    def to_json(self) -> dict[str, Any]:
        return {"quick": self.quick, "seeds": list(self.seeds or ()), "recipe": self.recipe.to_json()}


def seed_folder(seed: int) -> str:
    """The folder of one seed's runs and measurements inside --out."""
    return f"seed-{seed}"
