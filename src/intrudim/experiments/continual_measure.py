"""Measuring a continual stage: every task's held-out accuracy, the intruders against the original base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from intrudim.errors import IntrudimError
from intrudim.experiments.continual_context import _Context
from intrudim.experiments.continual_heads import _load_for_task


def _evaluate(ctx: _Context, weights: Path, heads: dict[str, Path]) -> dict[str, float | None]:
    """Held-out accuracy of every task on ``weights``: encoders with each trained task's own head, causal LMs all."""
    from safetensors.torch import load_file

    from intrudim.evaluate.accuracy import accuracy
    from intrudim.tasks.prompts import prompt_format

    train = ctx.config.train
    results: dict[str, float | None] = {name: None for name in ctx.tasks}
    loaded: dict[int, tuple[nn.Module, Any]] = {}
    for name, task in ctx.tasks.items():
        if not ctx.causal and name not in heads:
            continue
        key = 0 if ctx.causal else task.head_outputs
        if key not in loaded:
            loaded[key] = _load_for_task(ctx, weights, task)
        model, tokenizer = loaded[key]
        if not ctx.causal:
            head = load_file(str(heads[name]))
            missing = [k for k in head if k not in model.state_dict()]
            if missing:
                raise IntrudimError(f"The head of task '{name}' ({heads[name]}) does not fit the model in '{weights}' "
                                    f"(no parameter '{missing[0]}'). Start the continual run again in a new --out.")  # fmt: skip
            model.load_state_dict(head, strict=False)
        fmt = prompt_format(task) if ctx.causal else None
        results[name] = accuracy(model.eval(), tokenizer, task.validation, task.kind, max_length=train.max_length,
                                 batch_size=train.eval_batch_size, prompt_format=fmt)  # fmt: skip
    return results


def _count_intruders(ctx: _Context, weights: Path) -> dict[str, Any]:
    from intrudim.analysis import AnalyzeConfig, analyze

    config = AnalyzeConfig(k=ctx.config.k, epsilon=ctx.config.epsilon, effective_rank=False)
    result = analyze(ctx.base_model, weights, config, cache_dir=ctx.cache_dir)
    summary = result.to_json()
    return {
        "intruders": result.total_intruders, "energy_share": summary["intruder_energy_share_mean"],
        "energy_share_sum": summary["intruder_energy_share_sum"],
        "matrices_with_intruders": summary["matrices_with_intruders"], "matrices_analysed": summary["matrices_analysed"],
        "epsilon_sweep": summary["epsilon_sweep"],
    }  # fmt: skip
