"""Repairing a ``PeftModel`` in memory: the repaired adapter is added to the model beside the original.

``intrudim.repair(peft_model, lam=0.75)`` plans the repair of the model's (active or named) LoRA adapter exactly as
``intrudim repair BASE ADAPTER`` does, builds the same repaired adapter (rank r + |I| on the repaired modules, through
``rank_pattern`` / ``alpha_pattern``; weights saved whole repaired as dense fine-tunes) with the same writer, and
loads it into the model under a new name with peft's own ``load_adapter``. ``peft_model.set_adapter("repaired")``
uses it; ``save_pretrained`` writes what the CLI writes. The original adapter is left as it was.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from intrudim.analysis.planning import open_inputs
from intrudim.errors import IntrudimError
from intrudim.models.references import describe_module, is_peft_model
from intrudim.repair.config import RepairConfig
from intrudim.repair.result import RepairResult, planned_repair
from intrudim.repair.writers import dense_replacements, lora_replacements, write_adapter


def repair_peft_model(
    model: Any,
    config: RepairConfig,
    *,
    adapter_name: str | None = None,
    new_adapter_name: str = "repaired",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Any = False,
) -> RepairResult:
    """Add the repair of ``model``'s adapter ``adapter_name`` (default: the active one) to ``model`` as
    ``new_adapter_name``; returns the :class:`~intrudim.repair.core.RepairResult` (its ``output`` names the new
    adapter). Refuses a name the model already uses: nothing a user had is replaced."""
    if not is_peft_model(model):
        raise IntrudimError(
            f"repair in memory takes a PeftModel (LoRA); got {describe_module(model)}. For a fully fine-tuned model, "
            f"save it with save_pretrained and run intrudim.repair(base, folder, out=...)."
        )
    if new_adapter_name in model.peft_config:
        raise IntrudimError(
            f"The PeftModel already has an adapter named '{new_adapter_name}'; choose another new_adapter_name (its "
            f"adapters: {', '.join(sorted(model.peft_config))})."
        )
    started = time.perf_counter()
    analyze_config = config.analyze_config
    with open_inputs(None, model, analyze_config, adapter_name=adapter_name) as inputs:
        assert inputs.adapter is not None
        plans, result = planned_repair(inputs, config, cache_dir, use_cache, progress)
        adapter = inputs.adapter
        new_factors = lora_replacements(plans, adapter, config.lam, config.control)
        whole = {adapter.full_weights[key]: W
                 for key, W in dense_replacements(plans, inputs, config.lam, config.control).items()}  # fmt: skip
        result.unchanged = not any(m.removed_frobenius > 0 for m in result.matrices)
        with tempfile.TemporaryDirectory(prefix="intrudim-repair-") as staging:
            write_adapter(adapter, new_factors, Path(staging), whole=whole)
            model.load_adapter(staging, adapter_name=new_adapter_name)
    result.output = f"adapter '{new_adapter_name}' of the PeftModel in memory (set_adapter('{new_adapter_name}') uses it)"
    result.output_kind = "adapter"
    result.seconds = time.perf_counter() - started
    return result
