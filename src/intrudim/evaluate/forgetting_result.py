"""Pairing two models' per-sequence losses: means, tuned − base and its paired bootstrap 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import MEASURE_DESCRIPTIONS, MEASURE_UNITS


@dataclass(frozen=True)
class MeasureSummary:
    """One model's score: mean loss over sequences, exp(loss) for LMs, retrieval accuracy for the contrastive measure."""

    loss: float
    perplexity: float | None
    accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loss": self.loss, "perplexity": self.perplexity}
        if self.accuracy is not None:
            out["retrieval_accuracy"] = self.accuracy
        return out


@dataclass(frozen=True)
class ForgettingResult:
    """Base and tuned scores, the difference tuned − base, and its paired bootstrap 95% interval over sequences."""

    measure: str
    base: MeasureSummary
    tuned: MeasureSummary
    delta: float
    ci95: tuple[float, float]
    sequences: int
    tokens: int | None = None
    delta_accuracy: float | None = None
    resamples: int = 2000
    seed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def forgets(self) -> bool:
        """True when the tuned loss is higher and the interval excludes 0."""
        return self.ci95[0] > 0

    def verdict(self) -> str:
        what = "pseudo-loss" if self.measure == "pseudo_loss" else "contrastive loss" if self.measure == "contrastive" else "loss"
        unit = MEASURE_UNITS.get(self.measure, "")
        delta = f"{self.delta:+.4g} {unit}".rstrip()
        interval = f"95% CI [{self.ci95[0]:+.4g}, {self.ci95[1]:+.4g}]"
        if self.ci95[0] > 0:
            return f"TUNED forgot: its {what} on the text is {delta} higher than BASE's ({interval})."
        if self.ci95[1] < 0:
            return f"TUNED fits the text better than BASE: {what} {delta} ({interval})."
        return f"No measurable forgetting: {what} changed by {delta}, and the {interval} contains 0."

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measure": self.measure, "measure_description": MEASURE_DESCRIPTIONS.get(self.measure, ""),
            "base": self.base.to_json(), "tuned": self.tuned.to_json(), "delta": self.delta, "ci95": list(self.ci95),
            "tokens": self.tokens, "sequences": self.sequences,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "paired_over": "sequences"},
            "verdict": self.verdict(),
        }  # fmt: skip
        if self.delta_accuracy is not None:
            out["delta_retrieval_accuracy"] = self.delta_accuracy
        out.update(self.metadata)
        return out


def paired_bootstrap_ci(
    base: torch.Tensor, tuned: torch.Tensor, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean(tuned − base) over ``resamples`` resamplings of the sequences (same draw for both)."""
    difference = (tuned.double() - base.double()).flatten()
    n = difference.numel()
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    rows = max(1, 2_000_000 // max(n, 1))  # at most ~16 MB of indices at a time
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        index = torch.randint(n, (count, n), generator=generator)
        means[start : start + count] = difference[index].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(low), float(high)


def summarize(
    base_losses: torch.Tensor,
    tuned_losses: torch.Tensor,
    *,
    measure: str = "perplexity",
    tokens: int | None = None,
    base_accuracies: torch.Tensor | None = None,
    tuned_accuracies: torch.Tensor | None = None,
    resamples: int = 2000,
    seed: int = 0,
    **metadata: Any,
) -> ForgettingResult:
    """Means, exp(mean) for LM measures, tuned − base and its paired bootstrap 95% CI over sequences."""
    if base_losses.shape != tuned_losses.shape or base_losses.numel() == 0:
        raise IntrudimError(
            f"Base and tuned per-sequence losses must pair up: got shapes {tuple(base_losses.shape)} and "
            f"{tuple(tuned_losses.shape)}. Score both models with the same ForgettingProbe."
        )
    if not (torch.isfinite(base_losses).all() and torch.isfinite(tuned_losses).all()):
        raise IntrudimError("A loss is NaN or infinite: the model's weights are damaged or training diverged.")
    base_loss, tuned_loss = float(base_losses.double().mean()), float(tuned_losses.double().mean())
    is_lm = measure != "contrastive"

    def accuracy(values: torch.Tensor | None) -> float | None:
        return None if values is None else float(values.double().mean())

    base = MeasureSummary(base_loss, math.exp(base_loss) if is_lm else None, accuracy(base_accuracies))
    tuned = MeasureSummary(tuned_loss, math.exp(tuned_loss) if is_lm else None, accuracy(tuned_accuracies))
    delta_accuracy = None if base.accuracy is None or tuned.accuracy is None else tuned.accuracy - base.accuracy
    ci = paired_bootstrap_ci(base_losses, tuned_losses, resamples=resamples, seed=seed)
    return ForgettingResult(
        measure=measure, base=base, tuned=tuned, delta=tuned_loss - base_loss, ci95=ci, sequences=base_losses.numel(),
        tokens=tokens, delta_accuracy=delta_accuracy, resamples=resamples, seed=seed,
        metadata={k: v for k, v in metadata.items() if v is not None},
    )  # fmt: skip
