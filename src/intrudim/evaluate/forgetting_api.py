"""``intrudim.forgetting(tuned, base=None, text=...)``: forgetting of any model reference, files or in memory.

References on disk (folders, Hub ids, run dirs, Trainer checkpoints; BASE None: the adapter's recorded base) go to
:func:`~intrudim.evaluate.forgetting.measure_forgetting`, as the CLI does. A ``PeftModel`` in memory is scored as it
is: BASE with its adapters disabled (``disable_adapter()``), TUNED with the adapter active — nothing merged, copied or
saved; a fine-tuned ``nn.Module`` is scored against a BASE ``nn.Module``. The measure is chosen from the model's own
class (a causal LM: perplexity; a masked LM: the MLM pseudo-loss; a sentence-transformers encoder: its contrastive
objective), and the tokenizer comes from ``tokenizer=`` or from the folder the model was loaded from.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting import ForgettingProbe, measure_forgetting
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.evaluate.forgetting_result import ForgettingResult
from intrudim.models.loading import is_sentence_transformer, load_tokenizer, measure_for_config
from intrudim.models.references import (
    describe_module,
    is_peft_model,
    recorded_base,
    resolve_base,
    resolve_reference,
)


def forgetting(
    tuned: Any,
    base: Any = None,
    text: str | Path | None = None,
    config: ForgettingConfig | None = None,
    *,
    adapter_name: str | None = None,
    tokenizer: Any = None,
    progress: bool = False,
    **overrides: Any,
) -> ForgettingResult:
    """TUNED's loss on pre-training-like text minus BASE's, with a paired 95% bootstrap interval (Sec. 4; Figs. 9, 16).

    The paper's forgetting measure: at equal task accuracy, LoRA models with intruder dimensions are worse models of
    the pre-training distribution. The measure is chosen from the model's class: a causal LM's mean next-token
    cross-entropy (perplexity), a masked LM's MLM pseudo-loss (Salazar et al. 2020), or a sentence-transformers
    encoder's own in-batch contrastive objective (the embedded MiniLM has no LM head). The texts are cut into the
    same windows for both models, so the losses pair up; the interval resamples sequences (2000 times, seed 0).

    Args:
        tuned: The fine-tuned model: a PEFT adapter folder, an intrudim run directory, a Trainer checkpoint, a Hub
            id, a fine-tuned model folder, or a model in memory (a ``PeftModel``: its active adapter, or
            ``adapter_name``; an ``nn.Module``, with ``base`` in memory too).
        base: The pre-trained model, as any reference; None (default): the base an adapter records, or a
            ``PeftModel``'s own base (its adapters disabled; nothing is merged or copied).
        text: ``"wiki"`` (Wikipedia articles, the default for language models), ``"news"`` (news articles, the
            default for encoders), a UTF-8 file, a folder of ``.txt`` files, or a ``datasets`` dataset saved with
            ``save_to_disk`` with a ``text`` column. Use text the model was not fine-tuned on.
        config: The measurement's settings (default: ``ForgettingConfig()``: at most 20,000 tokens, windows of 128
            tokens, 64 pairs per contrastive batch, 2000 bootstrap resamples). Keyword ``overrides`` change single
            fields instead.
        adapter_name: For a ``PeftModel``: the adapter that is TUNED (default: the active one).
        tokenizer: The tokenizer of a model in memory whose folder is not known (default None: loaded from the
            folder the model came from).
        progress: Show progress on stderr (default False).
        **overrides: Fields of ``ForgettingConfig``: ``max_tokens`` (20,000), ``seq_len`` (128), ``batch_size``
            (None: 4 windows, 64 masked copies or 64 sentences), ``pairs_per_batch`` (64), ``bootstrap_resamples``
            (2000), ``bootstrap_seed`` (0), ``device`` (``"cpu"``), ``allow_pickle`` (False).

    Returns:
        The ``ForgettingResult``, with the ``base`` and ``tuned`` losses (and perplexities where defined),
        ``delta`` (tuned − base), ``ci95``, ``verdict``, the text and its licence, and ``to_json()``.

    Example:
        ```python
        result = intrudim.forgetting(peft_model, text="wiki")
        print(result.delta, result.ci95, result.verdict)
        ```
    """
    from dataclasses import replace

    config = replace(config, **overrides) if config is not None else ForgettingConfig(**overrides)
    if text is not None:
        config = replace(config, text=str(text))
    tuned_ref = resolve_reference(tuned, role="tuned", allow_pickle=config.allow_pickle, adapter_name=adapter_name,
                                  progress=progress)  # fmt: skip
    if not tuned_ref.in_memory:
        base_ref = resolve_base(base, tuned_ref, allow_pickle=config.allow_pickle, progress=progress)
        if base_ref.in_memory:
            raise IntrudimError(
                "forgetting of a TUNED on disk needs BASE on disk too (a folder, a Hub id or an embedded name); a BASE "
                "in memory has no files to load it from. Give both in memory, or both as references."
            )
        return measure_forgetting(str(base_ref.path), str(tuned_ref.path), config, progress=progress)
    return _in_memory(tuned_ref.module, base, tuned_ref.adapter_name, config, tokenizer, progress)


def _in_memory(
    model: nn.Module, base: Any, adapter_name: str | None, config: ForgettingConfig, tokenizer: Any, progress: bool
) -> ForgettingResult:
    started = time.perf_counter()
    peft = is_peft_model(model)
    inner = model.get_base_model() if peft else model
    if not peft and base is None:
        raise IntrudimError(
            f"forgetting of {describe_module(model)} needs BASE: the pre-trained model to compare with (a folder, a "
            f"Hub id, or the model in memory). A PeftModel carries its own base; a fine-tuned nn.Module does not."
        )
    base_model = None
    if not peft:
        base_ref = resolve_reference(base, role="base", allow_pickle=config.allow_pickle, progress=progress)
        if not base_ref.in_memory:
            raise IntrudimError(
                "forgetting of a fine-tuned nn.Module in memory needs BASE in memory too (the pre-trained nn.Module), "
                "so that both are scored with the same head; or save TUNED with save_pretrained and give both folders."
            )
        base_model = base_ref.module
    folder = _model_folder(model, inner, base)
    measure = measure_for_config(
        SimpleNamespace(architectures=[type(inner).__name__], model_type=getattr(inner.config, "model_type", ""),
                        is_decoder=getattr(inner.config, "is_decoder", False)),
        where=f"TUNED ({describe_module(model, adapter_name)})",
        sentence_transformer=folder is not None and is_sentence_transformer(folder),
    )  # fmt: skip
    if tokenizer is None:
        if folder is None:
            raise IntrudimError(
                f"forgetting of {describe_module(model, adapter_name)} needs its tokenizer: the folder it was loaded "
                f"from is not known. Pass tokenizer=AutoTokenizer.from_pretrained(...) (or base= the base's folder)."
            )
        tokenizer = load_tokenizer(folder)
    device = str(next(inner.parameters()).device)
    from dataclasses import replace

    config = replace(config, device=device)
    label = f"the base inside {describe_module(model, adapter_name)}" if peft else describe_module(base_model)
    probe = ForgettingProbe.from_parts(measure, inner.config, tokenizer, label, config.text, config)
    prepared = time.perf_counter()
    with _adapter(model, adapter_name, enabled=False):
        base_scores = probe.scores(base_model if base_model is not None else model, progress=progress,
                                   description="BASE")  # fmt: skip
    scored_base = time.perf_counter()
    with _adapter(model, adapter_name, enabled=True):
        tuned_scores = probe.scores(model, progress=progress, description="TUNED")
    finished = time.perf_counter()
    return probe.summarize(
        base_scores, tuned_scores, tuned_path=describe_module(model, adapter_name), notes=[
            "models in memory, scored as they are" + (" (BASE: the PeftModel with its adapters disabled)" if peft else "")
        ], batch_size=config.batch_size_for(measure), device=device,
        seconds={"prepare_text": round(prepared - started, 3), "score_base": round(scored_base - prepared, 3),
                 "score_tuned": round(finished - scored_base, 3), "total": round(finished - started, 3)},
        tokens_per_second=round(2 * probe.tokens / max(finished - prepared, 1e-9), 1),
    )  # fmt: skip


def _model_folder(model: nn.Module, inner: nn.Module, base: Any) -> Path | None:
    """The folder a model in memory came from: BASE given as a reference, the adapter's recorded base, or the path
    transformers recorded when it loaded the model (``name_or_path``); None when none exists locally."""
    candidates: list[Any] = []
    if base is not None and not isinstance(base, nn.Module):
        candidates.append(base)
    if is_peft_model(model):
        candidates.append(recorded_base(resolve_reference(model)))
    candidates.append(getattr(inner, "name_or_path", None) or getattr(inner.config, "_name_or_path", None))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            reference = resolve_reference(candidate, role="base")
        except IntrudimError:
            continue
        if reference.path is not None and (reference.path / "config.json").is_file():
            return reference.path
    return None


@contextlib.contextmanager
def _adapter(model: nn.Module, adapter_name: str | None, *, enabled: bool):
    """A PeftModel with its adapters disabled (BASE), or with ``adapter_name`` active (TUNED, restored after)."""
    if not is_peft_model(model):
        yield
        return
    if not enabled:
        with model.disable_adapter(), torch.no_grad():
            yield
        return
    previous = model.active_adapter
    if adapter_name is not None and adapter_name != previous:
        model.set_adapter(adapter_name)
    try:
        yield
    finally:
        if model.active_adapter != previous:
            model.set_adapter(previous)
