"""`intrudim forgetting BASE TUNED`: how much worse a fine-tuned model is on pre-training-like text (Sec. 4, Figs. 9, 16).

The paper's claim: LoRA models with intruder dimensions forget more of the pre-training distribution
than fully fine-tuned ones at equal task accuracy. Which loss measures that depends on what the base
model was pre-trained to do; the measure is chosen from BASE's architecture:

- causal LM (any ``*ForCausalLM``, e.g. the embedded ``smollm2``): next-token cross-entropy and perplexity
  over fixed windows (:mod:`intrudim.evaluate.perplexity`);
- masked LM (any ``*ForMaskedLM``, the paper's RoBERTa): the pseudo-loss of Salazar et al. (2020)
  (:mod:`intrudim.evaluate.pseudo_loss`);
- sentence-transformers encoder (a bare ``BertModel``/``RobertaModel``/… whose folder has the
  sentence-transformers files ``modules.json``…, such as the embedded ``minilm``): its own pre-training
  objective, the in-batch contrastive loss of adjacent-sentence pairs, plus retrieval accuracy
  (:mod:`intrudim.evaluate.contrastive`). A bare encoder without those files (a plain ``BertModel``) is
  refused: its pre-training objective needs the MLM head it lacks.

Models are resolved and loaded by :mod:`intrudim.models` (:mod:`~intrudim.models.loading` picks the measure and
loads the head it needs, :mod:`~intrudim.models.tuned` applies TUNED's weights).

This module pairs BASE and TUNED (:class:`ForgettingProbe`, :func:`measure_forgetting`); the other concerns have
rooms of their own: the settings (:mod:`~intrudim.evaluate.forgetting_config`), the text sources
(:mod:`~intrudim.evaluate.text`), the text cut into a measure's inputs
(:mod:`~intrudim.evaluate.forgetting_inputs`), the three measures (above), and the paired result with its bootstrap
(:mod:`~intrudim.evaluate.forgetting_result`).

TUNED is a PEFT LoRA adapter (merged in memory into the loaded LM, whatever wrapper it was trained on: the
``train`` verb trains a ``*ForSequenceClassification`` wrapper, so its adapter names modules ``bert.encoder…``
and saves a classifier that the LM does not have), a run directory of ``train`` (its ``final/``), a Trainer
checkpoint, a Hub repo id, or a fine-tuned model folder (its body weights replace BASE's; an LM head that TUNED
lacks, as after a classification fine-tune, is BASE's). The difference tuned − base comes with a paired
bootstrap 95% interval over sequences.

For many models of one base (the repair sweep), prepare the text once and score loaded models::

    probe = ForgettingProbe.prepare("smollm2", "news", ForgettingConfig(max_tokens=8000))
    base_losses = probe.losses(probe.load_base_model())
    tuned_losses = probe.losses(my_repaired_model)          # any nn.Module of the same architecture
    result = probe.summarize(base_losses, tuned_losses)      # delta, ci95, perplexities, tokens
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.evaluate.contrastive import PairScores, contrastive_pair_scores
from intrudim.evaluate.forgetting_config import DEFAULT_TEXT, ForgettingConfig
from intrudim.evaluate.forgetting_inputs import _prepare_pairs, _prepare_windows
from intrudim.evaluate.forgetting_result import ForgettingResult, summarize
from intrudim.evaluate.perplexity import causal_lm_window_losses
from intrudim.evaluate.pseudo_loss import pseudo_log_likelihood_losses
from intrudim.evaluate.text import TextSample, load_text
from intrudim.models.loading import (
    Measure,
    is_sentence_transformer,
    load_language_model,
    load_tokenizer,
    load_transformers_config,
    measure_for_config,
)
from intrudim.models.references import resolve_local_path, resolve_model_folder
from intrudim.models.tuned import TunedWeightsReport, apply_tuned_weights_


@dataclass(frozen=True)
class SequenceScores:
    """Per sequence (window, or sentence pair): loss, and retrieval accuracy for the contrastive measure."""

    losses: torch.Tensor  # (sequences,) float64
    accuracies: torch.Tensor | None = None  # (sequences,) float64


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or CI: plain lines, at most one every 10 s, and the end
        from intrudim.plain_progress import PlainProgress

        lines = PlainProgress(console, description, every=10.0)
        lines(f"scoring {total} tokens")
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if done >= total or lines.due():
                lines(f"{done}/{total} tokens, {lines.elapsed:.0f} s", force=True)

        yield advance
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@dataclass
class ForgettingProbe:
    """The text of a forgetting measurement, tokenized once for one BASE; scores any loaded model of that base.

    Build it with :meth:`prepare`. ``losses(model)`` / ``scores(model)`` take an already-loaded ``nn.Module``
    (BASE, TUNED, a repaired model…) with the architecture of BASE and return per-sequence float64 values in
    a fixed order, so two calls pair up for :meth:`summarize`.
    """

    measure: Measure
    config: ForgettingConfig
    base_model_path: Path
    text: TextSample
    tokenizer: Any
    tokens: int
    inputs: dict[str, Any]

    @classmethod
    def prepare(
        cls, base_model_path: str | Path, text_spec: str | Path | None = None, config: ForgettingConfig | None = None
    ) -> ForgettingProbe:
        """Choose the measure from BASE's architecture, load its tokenizer, and tokenize the text sample once."""
        config = config or ForgettingConfig()
        path = resolve_model_folder(base_model_path, role="base", what="BASE")
        model_config = load_transformers_config(path)
        measure = measure_for_config(model_config, where=f"BASE '{base_model_path}'",
                                     sentence_transformer=is_sentence_transformer(path))  # fmt: skip
        return cls.from_parts(measure, model_config, load_tokenizer(path), path, text_spec, config)

    @classmethod
    def from_parts(
        cls, measure: Measure, model_config: Any, tokenizer: Any, base_model_path: Path | str,
        text_spec: str | Path | None = None, config: ForgettingConfig | None = None,
    ) -> ForgettingProbe:  # fmt: skip
        """A probe for a measure already chosen and a tokenizer already loaded (a model in memory: :func:`forgetting`);
        ``base_model_path`` names BASE in the result."""
        config = config or ForgettingConfig()
        spec = text_spec if text_spec is not None else config.text if config.text is not None else DEFAULT_TEXT[measure]
        text = load_text(spec)
        if measure == "contrastive":
            inputs, tokens = _prepare_pairs(text, tokenizer, config)
        else:
            inputs, tokens = _prepare_windows(text, tokenizer, config, measure, model_config)
        return cls(measure, config, Path(base_model_path), text, tokenizer, tokens, inputs)

    @property
    def sequences(self) -> int:
        """Windows (LMs) or sentence pairs (contrastive) scored."""
        if self.measure == "contrastive":
            return len(self.inputs["anchors"])
        return int(self.inputs["windows"].shape[0])

    def load_base_model(self) -> nn.Module:
        """BASE with the head of this probe's measure, float32, on ``config.device``, in eval mode."""
        return load_language_model(self.base_model_path, self.measure, self.config.device)

    def load_tuned_model(self, tuned: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, TunedWeightsReport]:
        """TUNED as a model of this measure: ``model`` (or a fresh BASE) with TUNED's weights applied in place."""
        model = model if model is not None else self.load_base_model()
        report = apply_tuned_weights_(model, tuned, allow_pickle=self.config.allow_pickle)
        return model.eval(), report

    def scores(self, model: nn.Module, *, progress: bool = False, description: str = "") -> SequenceScores:
        """Per-sequence loss (and retrieval accuracy for the contrastive measure) of ``model`` on the prepared text."""
        config, device = self.config, self.config.device
        batch_size = config.batch_size_for(self.measure)
        was_training = model.training
        model.eval()
        try:
            with _progress_bar(progress, self._progress_total(), description or self.measure) as advance:
                if self.measure == "perplexity":
                    return SequenceScores(causal_lm_window_losses(
                        model, self.inputs["windows"], batch_size=batch_size, device=device, advance=advance))  # fmt: skip
                if self.measure == "pseudo_loss":
                    return SequenceScores(pseudo_log_likelihood_losses(
                        model, self.inputs["windows"], self.inputs["scored_positions"], self.inputs["mask_token_id"],
                        batch_size=batch_size, device=device, advance=advance,
                    ))  # fmt: skip
                pairs: PairScores = contrastive_pair_scores(
                    model, self.inputs["anchors"], self.inputs["positives"], self.inputs["pad_id"],
                    pairs_per_batch=config.pairs_per_batch, scale=config.contrastive_scale, batch_size=batch_size,
                    device=device, advance=advance,
                )  # fmt: skip
                return SequenceScores(pairs.losses, pairs.correct)
        finally:
            model.train(was_training)

    def losses(self, model: nn.Module, *, progress: bool = False) -> torch.Tensor:
        """(sequences,) float64 per-sequence losses of ``model`` (the input of :meth:`summarize`)."""
        return self.scores(model, progress=progress).losses

    def _progress_total(self) -> int:
        if self.measure == "perplexity":
            return int(self.inputs["windows"].numel())
        if self.measure == "pseudo_loss":
            return self.sequences * int(self.inputs["scored_positions"].numel())
        return sum(len(s) for s in self.inputs["anchors"]) + sum(len(s) for s in self.inputs["positives"])

    def summarize(
        self, base: torch.Tensor | SequenceScores, tuned: torch.Tensor | SequenceScores, **metadata: Any
    ) -> ForgettingResult:
        """:func:`summarize` with this probe's measure, text, token count and bootstrap settings filled in."""
        base_scores = base if isinstance(base, SequenceScores) else SequenceScores(base)
        tuned_scores = tuned if isinstance(tuned, SequenceScores) else SequenceScores(tuned)
        return summarize(
            base_scores.losses, tuned_scores.losses, measure=self.measure, tokens=self.tokens,
            base_accuracies=base_scores.accuracies, tuned_accuracies=tuned_scores.accuracies,
            resamples=self.config.bootstrap_resamples, seed=self.config.bootstrap_seed,
            text=self.text.to_json(), seq_len=self.config.seq_len, base_path=str(self.base_model_path),
            pairs_per_batch=self.config.pairs_per_batch if self.measure == "contrastive" else None, **metadata,
        )  # fmt: skip


def measure_forgetting(
    base: str | Path, tuned: str | Path, config: ForgettingConfig | None = None, *, progress: bool = False
) -> ForgettingResult:
    """BASE's and TUNED's loss on the text, tuned − base with its 95% interval (one model in memory at a time)."""
    config = config or ForgettingConfig()
    started = time.perf_counter()
    tuned_path = resolve_local_path(tuned, role="tuned", allow_pickle=config.allow_pickle, progress=progress)
    probe = ForgettingProbe.prepare(base, config.text, config)
    prepared = time.perf_counter()
    model = probe.load_base_model()
    loaded_base = time.perf_counter()
    base_scores = probe.scores(model, progress=progress, description="BASE")
    scored_base = time.perf_counter()
    model, report = probe.load_tuned_model(tuned_path, model)  # in place: BASE's memory is reused
    loaded_tuned = time.perf_counter()
    tuned_scores = probe.scores(model, progress=progress, description="TUNED")
    finished = time.perf_counter()
    scoring = (scored_base - loaded_base) + (finished - loaded_tuned)
    notes = []
    if report.ignored_head_weights:
        notes.append(f"TUNED's head-only weights not used by the {probe.measure} model: "
                     f"{', '.join(sorted(report.ignored_head_weights)[:6])}{'…' if len(report.ignored_head_weights) > 6 else ''}")  # fmt: skip
    if report.kept_from_base:
        notes.append(f"TUNED has no {', '.join(report.kept_from_base[:4])}: BASE's LM head is used for it.")
    return probe.summarize(
        base_scores, tuned_scores, tuned_path=str(tuned_path), tuned_weights=report.to_json(), notes=notes,
        batch_size=config.batch_size_for(probe.measure), device=config.device,
        seconds={"prepare_text": round(prepared - started, 3), "load_base": round(loaded_base - prepared, 3),
                 "score_base": round(scored_base - loaded_base, 3), "load_tuned": round(loaded_tuned - scored_base, 3),
                 "score_tuned": round(finished - loaded_tuned, 3), "total": round(finished - started, 3)},
        tokens_per_second=round(2 * probe.tokens / max(scoring, 1e-9), 1),
    )  # fmt: skip
