"""What `repair --sweep` measures and returns: the λ values and methods it sweeps, the loss measures and their units, one point per (method, λ), and the whole result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import MEASURE_UNITS
from intrudim.repair.config import check_lambda
from intrudim.spectral.repair import METHOD_DESCRIPTIONS, METHOD_LABELS

DEFAULT_SWEEP: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


SWEEP_CONTROLS: tuple[str, ...] = ("none", "non-intruder", "shrink")

DESTRUCTIVE_RATIO = 2.0
"""A TUNED model whose perplexity on the forgetting text is more than this many times BASE's is in a *destructive*
regime: it no longer models that text, and a repair's share of its forgetting says little about the paper's modest
forgetting at equal task accuracy (issue "The paper's claims across seeds and regimes")."""


@dataclass(frozen=True)
class LossMeasure:
    """What a loss of the ``forgetting`` measures is: its name, its unit, and the name of exp(loss) if it has one."""

    key: str  # perplexity | pseudo_loss | contrastive (intrudim.evaluate.forgetting.MEASURES)
    name: str
    unit: str
    exp_name: str | None  # perplexity / pseudo-perplexity; None for the contrastive loss

    @property
    def description(self) -> str:
        from intrudim.evaluate.forgetting_config import MEASURE_DESCRIPTIONS

        return MEASURE_DESCRIPTIONS.get(self.key, self.name)

    def describe(self, loss: float) -> str:
        """E.g. ``3.4162 nats/token (next-token cross-entropy; perplexity 30.5)``."""
        extra = f"; {self.exp_name} {math.exp(loss):.4g}" if self.exp_name is not None and loss < 700 else ""
        return f"{loss:.4f} {self.unit} ({self.name}{extra})"


LOSS_MEASURES = {
    "perplexity": LossMeasure("perplexity", "next-token cross-entropy", MEASURE_UNITS["perplexity"], "perplexity"),
    "pseudo_loss": LossMeasure("pseudo_loss", "MLM pseudo-loss −PLL/L, Salazar et al. 2020",
                               MEASURE_UNITS["pseudo_loss"], "pseudo-perplexity"),
    "contrastive": LossMeasure("contrastive", "in-batch contrastive loss of adjacent-sentence pairs",
                               MEASURE_UNITS["contrastive"], None),
}  # fmt: skip
"""The loss each ``forgetting`` measure (chosen from BASE's architecture) reports, in words and units."""


def loss_measure(measure: str) -> LossMeasure:
    return LOSS_MEASURES[measure]


def parse_lambdas(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` → (0.0, 0.25, 0.5); a clear error for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part for part in parts):
        raise IntrudimError(f"--sweep must be a comma-separated list of λ values ≥ 0, e.g. 0,0.25,0.5,0.75,1; got {text!r}.")
    values = []
    for part in parts:
        try:
            values.append(check_lambda(part, "every value of --sweep"))
        except IntrudimError:
            raise IntrudimError(
                f"--sweep must be a comma-separated list of λ values ≥ 0, e.g. 0,0.25,0.5,0.75,1; {part!r} in {text!r} "
                f"is not one."
            ) from None
    return tuple(sorted(set(values)))


def parse_controls(control: str) -> tuple[str, ...]:
    """``all`` → every method; ``none`` → the intruder repair alone; a control → the repair and that control."""
    if control == "all":
        return SWEEP_CONTROLS
    if control == "none":
        return ("none",)
    if control in SWEEP_CONTROLS:
        return ("none", control)
    raise IntrudimError(f"--control must be none, non-intruder, shrink or all; got {control!r}.")


@dataclass
class SweepPoint:
    """One (λ, method): the task accuracy, the loss on the task text and on the forgetting text, and ‖W' − W_t‖_F."""

    lam: float
    method: str  # none | non-intruder | shrink
    accuracy: float | None
    forgetting_loss: float | None  # the forgetting measure's loss on --text (lower = less forgetting)
    removed_frobenius: float  # ‖W' − W_t‖_F over every repaired matrix (root of the summed squares)
    task_loss: float | None = None  # the same measure's loss on --task-text (lower is better)

    def to_json(self) -> dict[str, Any]:
        return {"lambda": self.lam, "method": self.method, "accuracy": self.accuracy,
                "forgetting_loss": self.forgetting_loss, "task_loss": self.task_loss,
                "removed_frobenius": self.removed_frobenius}  # fmt: skip


@dataclass
class RepairSweepResult:
    """Task cost and forgetting per (λ, method). ``measure`` is the forgetting measure of BASE (``perplexity``,
    ``pseudo_loss`` or ``contrastive``: :data:`LOSS_MEASURES` says what its loss is and in which unit);
    ``base_loss`` is BASE's loss on ``text``, ``base_task_loss`` its loss on ``task_text``."""

    base: str
    tuned: str
    task: str | None
    text: dict[str, Any] | None
    measure: str | None
    k: int
    epsilon: float
    total_intruders: int
    matrices_with_intruders: int
    base_loss: float | None
    points: list[SweepPoint] = field(default_factory=list)
    seconds: float = 0.0
    task_text: dict[str, Any] | None = None
    base_task_loss: float | None = None
    tokens: int | None = None  # tokens of ``text`` scored (sentence-pair tokens for the contrastive measure)
    task_tokens: int | None = None  # tokens of ``task_text`` scored
    task_examples: int | None = None  # held-out examples of ``task`` scored

    def point(self, lam: float, method: str) -> SweepPoint:
        return next(p for p in self.points if p.lam == lam and p.method == method)

    @property
    def tuned_loss(self) -> float | None:
        """The un-repaired TUNED model's loss on ``text`` (λ = 1)."""
        ones = [p for p in self.points if p.lam == 1.0]
        return ones[0].forgetting_loss if ones else None

    @property
    def tuned_task_loss(self) -> float | None:
        """The un-repaired TUNED model's loss on ``task_text`` (λ = 1)."""
        ones = [p for p in self.points if p.lam == 1.0]
        return ones[0].task_loss if ones else None

    def regime(self) -> dict[str, Any] | None:
        """TUNED's perplexity on the forgetting text over BASE's, exp(tuned loss − base loss), and whether it is
        *destructive* (above :data:`DESTRUCTIVE_RATIO`); None without a text or for a loss with no perplexity."""
        loss = self.loss
        if loss is None or loss.exp_name is None or self.base_loss is None or self.tuned_loss is None:
            return None
        ratio = math.exp(min(self.tuned_loss - self.base_loss, 700.0))
        return {"perplexity_ratio": ratio, "ratio_name": f"TUNED {loss.exp_name} / BASE {loss.exp_name}",
                "destructive": ratio > DESTRUCTIVE_RATIO, "destructive_above": DESTRUCTIVE_RATIO}

    @property
    def loss(self) -> LossMeasure | None:
        """What ``forgetting_loss``, ``task_loss``, ``base_loss`` are (name, unit), or None when no text was scored."""
        return LOSS_MEASURES.get(self.measure) if self.measure else None

    def labels(self) -> dict[str, str]:
        """Column → what it is, with its unit and direction (the JSON's ``labels``, the table's, the figure's)."""
        out = {"removed_frobenius": "the Frobenius norm ‖W' − W_t‖ over every repaired matrix (root of the summed squares)"}
        loss = self.loss
        if self.task is not None:
            out["accuracy"] = f"held-out accuracy on task '{self.task}' (fraction correct; higher is better)"
        if loss is not None and self.task_text is not None:
            out["task_loss"] = (f"{loss.name} on the task text '{self.task_text['source']}' ({loss.unit}; lower is "
                                f"better)")  # fmt: skip
        if loss is not None and self.text is not None:
            out["forgetting_loss"] = (f"{loss.name} on the text '{self.text['source']}' ({loss.unit}; lower = less "
                                      f"forgetting)")  # fmt: skip
        return out

    def to_json(self) -> dict[str, Any]:
        loss = self.loss
        return {
            "base": self.base, "tuned": self.tuned, "task": self.task, "task_examples": self.task_examples,
            "task_text": self.task_text, "task_tokens": self.task_tokens, "text": self.text, "tokens": self.tokens,
            "measure": self.measure, "measure_description": loss.description if loss else None,
            "loss_name": loss.name if loss else None, "loss_unit": loss.unit if loss else None,
            "k": self.k, "epsilon": self.epsilon, "total_intruders": self.total_intruders,
            "matrices_with_intruders": self.matrices_with_intruders, "base_loss": self.base_loss,
            "tuned_loss": self.tuned_loss, "base_task_loss": self.base_task_loss,
            "tuned_task_loss": self.tuned_task_loss, "regime": self.regime(), "labels": self.labels(),
            "points": [p.to_json() for p in self.points], "seconds": round(self.seconds, 3),
            "methods": {m: METHOD_LABELS[m] for m in sorted({p.method for p in self.points})},
            "method_descriptions": {m: METHOD_DESCRIPTIONS[m] for m in dict.fromkeys(p.method for p in self.points)},
        }  # fmt: skip
