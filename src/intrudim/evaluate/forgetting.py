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
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.errors import IntrudimError, InvalidConfigError
from intrudim.evaluate.contrastive import SENTENCE_TRANSFORMERS_SCALE, PairScores, contrastive_pair_scores
from intrudim.evaluate.perplexity import causal_lm_window_losses, token_windows
from intrudim.evaluate.pseudo_loss import pseudo_log_likelihood_losses
from intrudim.evaluate.text import TextSample, adjacent_sentence_pairs, load_text
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

MEASURES: tuple[str, ...] = ("perplexity", "pseudo_loss", "contrastive")
MEASURE_DESCRIPTIONS = {
    "perplexity": "causal LM: mean next-token cross-entropy over windows of the text (perplexity = exp(loss))",
    "pseudo_loss": "masked LM: pseudo-loss −PLL/L of Salazar et al. (2020), every token masked once "
    "(pseudo-perplexity = exp(loss)), as in the paper (Sec. 4, Figs. 9, 16)",
    "contrastive": "sentence-transformers encoder: its own pre-training objective, the symmetric in-batch "
    "InfoNCE loss (scale 20, mean-pooled normalised embeddings) of adjacent-sentence pairs, and retrieval accuracy",
}
DEFAULT_BATCH_SIZE = {"perplexity": 4, "pseudo_loss": 64, "contrastive": 64}
DEFAULT_TEXT = {"perplexity": "wiki", "pseudo_loss": "wiki", "contrastive": "news"}
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")  # positions start at pad+1
PAIR_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class ForgettingConfig:
    """Settings of a forgetting measurement; the defaults are the definition every result is compared under.

    ``text``: ``wiki``, ``news``, a file, a folder of .txt, or a saved dataset; None picks ``wiki`` for LMs and
    ``news`` for the contrastive measure (adjacent sentences of news articles). ``max_tokens``: at most this many
    tokens of text are scored (20k: a ±1% interval on smollm2 in about a minute on 2 cores). ``seq_len``: tokens
    per window (LMs; special tokens of masked LMs come on top) or the truncation length of a sentence
    (contrastive; 128 as in MiniLM's training). ``batch_size``: sequences per forward pass (masked LMs: masked
    copies; None: 4 windows, 64 copies, 64 sentences). ``pairs_per_batch``: in-batch candidates of the
    contrastive loss (its chance level is ln of it). ``bootstrap_resamples``/``bootstrap_seed``: the paired
    bootstrap of tuned − base over sequences.
    """

    text: str | None = None
    max_tokens: int = 20_000
    seq_len: int = 128
    batch_size: int | None = None
    pairs_per_batch: int = 64
    contrastive_scale: float = SENTENCE_TRANSFORMERS_SCALE
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    device: str = "cpu"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        for name in ("max_tokens", "seq_len", "pairs_per_batch", "bootstrap_resamples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfigError(f"{name}={value!r} must be a positive integer.")
        if self.seq_len < 2:
            raise InvalidConfigError(f"seq_len={self.seq_len} must be at least 2 (a window predicts seq_len − 1 tokens).")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InvalidConfigError(f"batch_size={self.batch_size!r} must be a positive integer (or None for the default).")
        if self.pairs_per_batch < 2:
            raise InvalidConfigError(f"pairs_per_batch={self.pairs_per_batch} must be at least 2 (one true pair, one negative).")
        if not (math.isfinite(self.contrastive_scale) and self.contrastive_scale > 0):
            raise InvalidConfigError(f"contrastive_scale={self.contrastive_scale!r} must be a positive number.")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise InvalidConfigError(f"device={self.device!r} must be cpu, cuda, cuda:N or mps.")

    def batch_size_for(self, measure: str) -> int:
        return self.batch_size or DEFAULT_BATCH_SIZE[measure]


# ------------------------------------------------------------------------------------------------ probe


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


def _token_stream(text: TextSample, tokenizer: Any, needed: int) -> list[int]:
    """Token ids (no special tokens) of the sample's paragraphs joined by blank lines, at least ``needed`` if there are."""
    from transformers.utils import logging as hf_logging

    paragraphs = text.paragraphs
    chars = max(4096, 8 * needed)  # BPE/WordPiece English: 3–5 characters a token; grow until enough
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum" is expected for one stream
    try:
        while True:
            chosen, total = [], 0
            for paragraph in paragraphs:
                if total >= chars:
                    break
                chosen.append(paragraph)
                total += len(paragraph) + 2
            ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
            if len(ids) >= needed or len(chosen) == len(paragraphs):
                return list(ids)
            chars *= 2
    finally:
        hf_logging.set_verbosity(verbosity)


def _special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before and after a text ([CLS] … [SEP], <s> … </s>)."""
    encoded = tokenizer("hello", add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = list(encoded["input_ids"]), list(encoded["special_tokens_mask"])
    content = [i for i, s in enumerate(special) if not s]
    if not content:
        return [], []
    return ids[: content[0]], ids[content[-1] + 1 :]


def _prepare_windows(
    text: TextSample, tokenizer: Any, config: ForgettingConfig, measure: str, model_config: Any
) -> tuple[dict[str, Any], int]:
    if not text.paragraphs:
        raise IntrudimError(f"--text {text.source} holds no text. Give a text with at least {config.seq_len} tokens.")
    windows = token_windows(_token_stream(text, tokenizer, config.max_tokens), config.seq_len, config.max_tokens)
    tokens = int(windows.numel())
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if measure == "perplexity":
        if max_positions is not None and config.seq_len > max_positions:
            raise IntrudimError(f"--seq-len {config.seq_len} exceeds the model's {max_positions} positions; use a smaller --seq-len.")
        return {"windows": windows}, tokens
    mask_token_id = tokenizer.mask_token_id
    if mask_token_id is None:
        raise IntrudimError("BASE's tokenizer has no mask token, so the masked-LM pseudo-loss cannot be computed.")
    before, after = _special_template(tokenizer)
    width = len(before) + config.seq_len + len(after)
    if max_positions is not None:
        limit = max_positions - (2 if getattr(model_config, "model_type", "") in _POSITION_OFFSET_TYPES else 0)
        if width > limit:
            raise IntrudimError(
                f"--seq-len {config.seq_len} plus {len(before) + len(after)} special tokens exceeds the model's "
                f"{limit} positions; use --seq-len {limit - len(before) - len(after)} or less."
            )
    n = windows.shape[0]
    with_specials = torch.cat([
        torch.tensor(before, dtype=torch.long).expand(n, len(before)), windows,
        torch.tensor(after, dtype=torch.long).expand(n, len(after)),
    ], dim=1)  # fmt: skip
    positions = torch.arange(len(before), len(before) + config.seq_len)
    return {"windows": with_specials, "scored_positions": positions, "mask_token_id": int(mask_token_id)}, tokens


def _prepare_pairs(text: TextSample, tokenizer: Any, config: ForgettingConfig) -> tuple[dict[str, Any], int]:
    pairs = adjacent_sentence_pairs(text)
    # Shuffled (fixed seed) so that a batch's negatives come from many articles, as in MiniLM's training batches;
    # in text order the pairs of one article would share a batch and be each other's hard negatives.
    random.Random(PAIR_SHUFFLE_SEED).shuffle(pairs)
    group = config.pairs_per_batch
    anchors: list[list[int]] = []
    positives: list[list[int]] = []
    tokens = 0
    kept_tokens = 0
    for start in range(0, len(pairs) - group + 1, group):
        chunk = pairs[start : start + group]
        a = tokenizer([p[0] for p in chunk], truncation=True, max_length=config.seq_len)["input_ids"]
        b = tokenizer([p[1] for p in chunk], truncation=True, max_length=config.seq_len)["input_ids"]
        chunk_tokens = sum(len(x) for x in a) + sum(len(x) for x in b)
        if anchors and tokens + chunk_tokens > config.max_tokens:
            break
        anchors.extend(list(x) for x in a)
        positives.extend(list(x) for x in b)
        tokens += chunk_tokens
        kept_tokens = tokens
    if not anchors:
        raise IntrudimError(
            f"--text {text.source} gives {len(pairs)} pairs of adjacent sentences, fewer than one batch of "
            f"{group} pairs that the contrastive loss compares. Give a longer text (more paragraphs of several "
            f"sentences each)."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"anchors": anchors, "positives": positives, "pad_id": int(pad_id)}, kept_tokens


# ---------------------------------------------------------------------------------------------- results


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
        interval = f"95% CI [{self.ci95[0]:+.4g}, {self.ci95[1]:+.4g}]"
        if self.ci95[0] > 0:
            return f"TUNED forgot: its {what} on the text is {self.delta:+.4g} higher than BASE's ({interval})."
        if self.ci95[1] < 0:
            return f"TUNED fits the text better than BASE: {what} {self.delta:+.4g} ({interval})."
        return f"No measurable forgetting: {what} changed by {self.delta:+.4g}, and the {interval} contains 0."

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
