"""`intrudim repair BASE TUNED`: scale the intruders' singular values by λ and write the result exactly (v2).

For each matrix planned as ``analyze`` plans it (same k, ε, selection), the top singular triplets of W_t
come from the structured top-k (LoRA) or a Lanczos top-k (dense), the intruders among the top-k are found
as in ``analyze``, and W' = W_t + (λ − 1)·Σ_{j∈I} σ_j u_j v_jᵀ is written:
- for a LoRA adapter, as a PEFT adapter of rank r + |I| on the repaired modules (``rank_pattern`` /
  ``alpha_pattern``), exact: merged, it equals W' up to the output dtype's rounding; a weight the adapter saved
  whole (``modules_to_save``) is repaired as a dense fine-tune and written back whole in the adapter;
- for a dense (fully fine-tuned) model, as merged weights, sharded like the input.
An adapter or model without intruders is copied unchanged, bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from intrudim.analysis.planning import open_inputs
from intrudim.analysis.setup import check_device
from intrudim.errors import IntrudimError
from intrudim.models.references import is_peft_model
from intrudim.repair.config import RepairConfig
from intrudim.repair.plan import ProgressCallback
from intrudim.repair.result import RepairResult, planned_repair


def repair(
    base: Any = None,
    tuned: Any = None,
    config: RepairConfig | None = None,
    *,
    out: str | Path | None = None,
    merged: bool = False,
    overwrite: bool = False,
    adapter_name: str | None = None,
    new_adapter_name: str = "repaired",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | ProgressCallback = False,
    **overrides: Any,
) -> RepairResult:
    """Scale TUNED's intruders by λ against BASE (the v2 intervention) and write the result exactly.

    Per matrix, W' = W_t + (λ − 1)·Σ_{j∈I} σ_j u_j v_jᵀ with I the intruders among the top-k singular vectors of
    W_t, found as :func:`intrudim.analyze` finds them (Sec. 4, Definition 1). A LoRA adapter is written as a PEFT
    adapter of rank r + |I| (exact: merged, it equals W' up to the output dtype's rounding); a dense model as
    merged weights. The intruders left in the repaired weights (a σ scaled by λ = 0.75 often still ranks in the
    top-k) are counted: ``result.remaining_intruders``, per matrix ``remaining_ranks``, equal to what ``analyze``
    finds in the output.

    Args:
        base: The pre-trained model W₀ comes from: any reference of :mod:`intrudim.models` (embedded name, folder,
            ``.safetensors`` file, Hub id ``org/name[@revision]``, ``nn.Module``). None (default): the base the
            adapter records, or a ``PeftModel``'s own weights.
        tuned: The fine-tuned model: a PEFT LoRA adapter, an intrudim run, a Trainer checkpoint, a dense model, or
            a ``PeftModel`` in memory. ``repair(tuned, ...)`` with one positional argument means TUNED.
        config: A :class:`~intrudim.repair.config.RepairConfig` (default: ``RepairConfig()``, λ = 0.75, k = 10,
            ε = 0.5, control ``"none"``); keyword ``overrides`` (``lam=0.5``, ``k=6``, ``control="shrink"``…) build
            or change it.
        out: Folder to write ``adapter/`` (LoRA) or ``model/`` (dense or ``merged``), ``repair.json`` and
            ``report.html`` to. None (default) is allowed only for a ``PeftModel`` given alone: it is repaired in
            memory, the repaired adapter added to it as ``new_adapter_name`` (:mod:`intrudim.repair.in_memory`).
        merged: Write the repaired weights merged into the base (``model/``) instead of an adapter (default False).
        overwrite: Replace an earlier repair's output in ``out`` (default False: refused, nothing changed).
        adapter_name: Which adapter of a ``PeftModel`` (default: its active one).
        new_adapter_name: The name of the repaired adapter added to a ``PeftModel`` in memory (default
            ``"repaired"``).
        cache_dir: The base SVD cache (default: ``$INTRUDIM_CACHE`` or the user cache); ``use_cache=False`` uses
            none (default True).
        progress: True for a progress bar on stderr (plain lines without a terminal), or a callback
            ``(done, total, what)``; default False.

    Returns:
        A :class:`~intrudim.repair.result.RepairResult`: per matrix the intruders, what λ did to them, what
        remains; ``output`` is where the repaired weights were written.

    Example::

        result = intrudim.repair("smollm2", "runs/lora-r1", lam=0.5, out="runs/lora-r1-repaired")
        print(result.total_intruders, result.remaining_intruders, result.output)
        result = intrudim.repair(peft_model, lam=0.75)  # then peft_model.set_adapter("repaired")
    """
    from dataclasses import replace

    from intrudim.repair.writers import output_name, prepare_output, write_outputs

    config = replace(config, **overrides) if config is not None else RepairConfig(**overrides)
    check_device(config.device)
    if tuned is None:
        base, tuned = None, base  # repair(adapter_or_peft_model, ...)
    if tuned is None:
        raise IntrudimError("repair needs TUNED: a LoRA adapter, a fine-tuned model, or a PeftModel in memory.")
    if out is None:
        from intrudim.repair.in_memory import repair_peft_model

        if base is not None or not is_peft_model(tuned):
            raise IntrudimError(
                "repair needs out=DIR to write the repaired adapter or model to (only a PeftModel given alone is "
                "repaired in memory, as a new adapter of it)."
            )
        return repair_peft_model(tuned, config, adapter_name=adapter_name, new_adapter_name=new_adapter_name,
                                 cache_dir=cache_dir, use_cache=use_cache, progress=progress)  # fmt: skip
    started = time.perf_counter()
    analyze_config = config.analyze_config
    with open_inputs(base, tuned, analyze_config, adapter_name=adapter_name) as inputs:
        out_dir = prepare_output(Path(out), inputs, merged=merged, overwrite=overwrite)
        plans, result = planned_repair(inputs, config, cache_dir, use_cache, progress)
        plain_progress_line(progress, f"writing {out_dir / output_name(inputs, merged)}")
        write_outputs(result, plans, inputs, out_dir, merged=merged, overwrite=overwrite)
    result.seconds = time.perf_counter() - started
    from intrudim.fileio import write_json_atomic
    from intrudim.report.repair_report import write_repair_report

    write_json_atomic(out_dir / "repair.json", result.to_json())
    write_repair_report(result, out_dir)
    plain_progress_line(progress, f"done in {result.seconds:.0f} s")
    return result


def plain_progress_line(progress: bool | ProgressCallback, text: str, label: str = "repair") -> None:
    """One ``"<label>: <text>"`` line on stderr when ``progress`` is on (True) and stderr is not a terminal (a log
    file, a pipe, CI), where a rich bar shows nothing; on a terminal the bar of :func:`plan_repairs` says enough."""
    if progress is not True:
        return
    from rich.console import Console

    from intrudim.plain_progress import PlainProgress

    console = Console(stderr=True)
    if not console.is_terminal:
        PlainProgress(console, label, every=0.0)(text, force=True)
