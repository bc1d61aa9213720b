"""Training configuration; defaults are the recipe of Appendix A of the paper.

Appendix A (RoBERTa-base): AdamW without weight decay, linear schedule with 6% warm-up, batch 16, at
most 5 epochs; all linear layers of the blocks plus all biases and LayerNorms trained for every method,
embeddings frozen; full fine-tuning at lr 1e-5; LoRA with α = 2r and the "total learning rate"
α·η = 2.4e-3 held fixed across ranks (so η = 2.4e-3/α); ranks {1, 2, 4, 8, 16, 64, 768}; models trained
to equal accuracy on their task. Where the embedded default model needs its own value it is said below.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from intrudim.errors import InvalidConfigError

Method = Literal["full", "lora", "lora-b-only"]
AlphaRule = Literal["2r", "fixed", "rslora"]
Schedule = Literal["linear", "constant"]
Objective = Literal["auto", "classification", "causal-lm"]

METHODS: tuple[str, ...] = ("full", "lora", "lora-b-only")
ALPHA_RULES: tuple[str, ...] = ("2r", "fixed", "rslora")
SCHEDULES: tuple[str, ...] = ("linear", "constant")
OBJECTIVES: tuple[str, ...] = ("auto", "classification", "causal-lm")
EMBEDDED_MODEL_NAME = "minilm"
EMBEDDED_CAUSAL_LM_NAME = "smollm2"

PAPER_FULL_FT_LR = 1e-5
"""Appendix A: the full fine-tuning learning rate for RoBERTa-base."""

EMBEDDED_FULL_FT_LR = 1e-4
"""Full fine-tuning learning rate on the embedded MiniLM. At the paper's 1e-5 the 6-layer, 384-wide
MiniLM (with a freshly initialised head) does not reach the target accuracy of the generated tasks in a
few hundred steps; 1e-4 does, and still adds no intruder dimensions, as the paper finds for full FT."""

PAPER_TOTAL_LR = 2.4e-3
"""Appendix A: LoRA's "total learning rate" α·η, held fixed across ranks (for every model, the embedded one
included: at 10x this value LoRA r=1 on MiniLM stopped learning the generated tasks in our runs)."""

FIXED_ALPHA = 8.0
"""The fixed α of the paper's α = 8 experiments (Table 1, Figs. 16-18); also the default α of rsLoRA."""


def _check_positive(name: str, value: float | int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InvalidConfigError(f"{name}={value!r} must be a positive number.")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; ``config.json`` of a run directory is this, frozen.

    Defaults are the recipe of Appendix A (AdamW without weight decay, linear schedule with 6% warm-up, batch 16, at
    most 5 epochs, LoRA with α = 2r at the total learning rate α·η = 2.4e-3); where the embedded model needs its own
    value it is said. Validated when built (a bad value raises ``InvalidConfigError`` naming it).

    Attributes:
        model: ``"minilm"`` (default) / ``"smollm2"`` (the embedded models) or a local Hugging Face folder.
        task: A task of the registry (default ``"sentiment"``; ``intrudim tasks`` lists them).
        objective: ``"auto"`` (default) takes ``causal-lm`` for models whose config names a causal-LM architecture
            (``*ForCausalLM``, GPT-2's ``LMHeadModel``) and ``classification`` otherwise; ``"classification"`` adds a
            sequence-classification head (fresh when the folder has none), trained with BERT's pooler that feeds it;
            ``"causal-lm"`` fine-tunes a causal LM as a language model on "prompt + answer text", the loss on the
            answer tokens only, its own LM head frozen. A run records the objective it resolved to.
        method: ``"lora"`` (default), ``"full"`` (every parameter but the embeddings) or ``"lora-b-only"`` (A a
            frozen random matrix with orthonormal rows, only B trained; Fig. 10).
        rank: LoRA rank r (default 8; ignored for ``full``). The paper's ranks: 1, 2, 4, 8, 16, 64, 768.
        alpha: A fixed α (default None: α from ``alpha_rule``). Giving it makes ``alpha_rule`` ``"fixed"``.
        alpha_rule: ``"2r"`` (default, α = 2r, App. A), ``"fixed"`` (α = ``alpha`` or 8, the paper's α = 8 runs)
            or ``"rslora"`` (scale α/√r, α = ``alpha`` or 8).
        lr: The learning rate η, overriding the method's default (default None: LoRA ``total_lr``/α; full 1e-5,
            or 1e-4 on the embedded MiniLM).
        total_lr: LoRA's "total learning rate" α·η, held fixed across ranks (default 2.4e-3, App. A).
        epochs: Epochs over the training split (default 5, App. A); ``max_steps`` overrides it.
        max_steps: A step limit instead of ``epochs`` (default None).
        target_accuracy: Stop at the first evaluation whose held-out accuracy reaches it (default None: train to
            the step limit). The paper compares methods at equal accuracy (Tables 1–2).
        eval_every: Evaluate the held-out split every N steps (default 50) and at the last step.
        checkpoint_every: Save a checkpoint and count its intruders every N steps (default 100; None: none, only
            the final weights are analysed).
        train_fraction: A seeded, nested fraction of the training split (default 1.0; Fig. 12's data-size study).
        seed: Seed of the head and LoRA initialisation, the data order and generated tasks (default 42).
        batch_size: Training batch size (default 16, App. A).
        eval_batch_size: Evaluation batch size (default 64).
        warmup_ratio: Fraction of the steps spent warming up (default 0.06, App. A).
        schedule: ``"linear"`` decay after the warm-up (default, App. A) or ``"constant"``.
        max_grad_norm: Gradient-norm clipping (default 1.0, the Hugging Face Trainer's default that the paper's
            recipe, after Hu et al. 2021, trains with); None turns it off.
        weight_decay: AdamW weight decay (default 0, App. A).
        max_length: Tokens per example (default 64; the paper uses 512, the generated tasks are short).
        lora_dropout: LoRA dropout (default 0).
        other_lr: Its own η for the biases, LayerNorms and head of a LoRA run (default None: the same η as LoRA, as
            in the paper).
        data_path: A folder with a real task's data (default None: the local ``datasets`` cache).
        max_train_examples: Training examples: the size of a generated task, a cap on a real one (default None:
            4000 for a generated task, all of a real one).
        max_validation_examples: Held-out examples, likewise (default None: 400 for a generated task, all of a real
            one's validation split).
        track_intruders: Count the intruders of every checkpoint and of the final weights (default True; Fig. 7).
        intruder_k: k of that tracking (default 10; Sec. 4).
        intruder_epsilon: ε of that tracking (default 0.5; Sec. 4).
        log_every: Write the mean training loss to ``metrics.jsonl`` every N steps (default 10).
    """

    model: str = EMBEDDED_MODEL_NAME
    task: str = "sentiment"
    objective: Objective = "auto"
    method: Method = "lora"
    rank: int = 8
    alpha: float | None = None
    alpha_rule: AlphaRule = "2r"
    lr: float | None = None
    total_lr: float = PAPER_TOTAL_LR
    epochs: float = 5.0
    max_steps: int | None = None
    target_accuracy: float | None = None
    eval_every: int = 50
    checkpoint_every: int | None = 100
    train_fraction: float = 1.0
    seed: int = 42
    batch_size: int = 16
    eval_batch_size: int = 64
    warmup_ratio: float = 0.06
    schedule: Schedule = "linear"
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    max_length: int = 64
    lora_dropout: float = 0.0
    other_lr: float | None = None
    data_path: str | None = None
    max_train_examples: int | None = None
    max_validation_examples: int | None = None
    track_intruders: bool = True
    intruder_k: int = 10
    intruder_epsilon: float = 0.5
    log_every: int = 10

    def __post_init__(self) -> None:
        for name, choices in (("method", METHODS), ("alpha_rule", ALPHA_RULES), ("schedule", SCHEDULES),
                              ("objective", OBJECTIVES)):
            if getattr(self, name) not in choices:
                raise InvalidConfigError(
                    f"{name}={getattr(self, name)!r} is unknown; choose one of {', '.join(choices)}."
                )
        if self.method != "full" and (not isinstance(self.rank, int) or self.rank < 1):
            raise InvalidConfigError(f"rank={self.rank!r} must be a positive integer for method {self.method}.")
        if self.alpha is not None and self.alpha_rule == "2r":
            object.__setattr__(self, "alpha_rule", "fixed")  # an explicit α means a fixed α
        for name in ("alpha", "lr", "total_lr", "epochs", "max_length", "batch_size", "eval_batch_size",
                     "eval_every", "log_every", "intruder_k"):
            _check_positive(name, getattr(self, name))
        _check_positive("max_steps", self.max_steps)
        _check_positive("other_lr", self.other_lr)
        _check_positive("max_grad_norm", self.max_grad_norm)
        _check_positive("checkpoint_every", self.checkpoint_every)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidConfigError(f"warmup_ratio={self.warmup_ratio!r} must be in [0, 1).")
        if self.weight_decay < 0:
            raise InvalidConfigError(f"weight_decay={self.weight_decay!r} must be ≥ 0 (the paper uses 0).")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InvalidConfigError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise InvalidConfigError(
                f"target_accuracy={self.target_accuracy!r} must be in (0, 1], e.g. --target-accuracy 0.9."
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise InvalidConfigError(f"train_fraction={self.train_fraction!r} must be in (0, 1].")
        if not 0.0 < self.intruder_epsilon < 1.0:
            raise InvalidConfigError(f"intruder_epsilon={self.intruder_epsilon!r} must be in (0, 1).")
        if self.seed < 0:
            raise InvalidConfigError(f"seed={self.seed!r} must be ≥ 0.")

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "lora-b-only")

    @property
    def resolved_alpha(self) -> float | None:
        """α of the LoRA update (None for full fine-tuning)."""
        if not self.is_lora:
            return None
        if self.alpha_rule == "2r":
            return 2.0 * self.rank
        return self.alpha if self.alpha is not None else FIXED_ALPHA

    @property
    def lora_scale(self) -> float | None:
        """The factor s of ΔW = s·B·A: α/r, or α/√r for rsLoRA."""
        alpha = self.resolved_alpha
        if alpha is None:
            return None
        return alpha / math.sqrt(self.rank) if self.alpha_rule == "rslora" else alpha / self.rank

    @property
    def learning_rate(self) -> float:
        """η: ``lr`` if given; LoRA: total_lr/α (App. A); full: 1e-5 (1e-4 on the embedded MiniLM)."""
        if self.lr is not None:
            return self.lr
        if self.is_lora:
            return self.total_lr / float(self.resolved_alpha or 1.0)
        return EMBEDDED_FULL_FT_LR if self.model == EMBEDDED_MODEL_NAME else PAPER_FULL_FT_LR

    def to_json(self) -> dict[str, Any]:
        """The fields plus the values they resolve to (α, scale, η) for the run's config.json."""
        fields = dataclasses.asdict(self)
        fields["resolved"] = {
            "alpha": self.resolved_alpha,
            "lora_scale": self.lora_scale,
            "learning_rate": self.learning_rate,
        }
        return fields

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``config.json`` (extra keys such as ``resolved`` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
