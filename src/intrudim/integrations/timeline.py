"""What :class:`~intrudim.integrations.callback.IntruderCallback` records: one entry per analysed training step, the
values it logs to the Trainer's trackers, the timeline JSON and the Fig. 7 figure (intruders over training steps).

Everything here is built from an :class:`~intrudim.analysis.results.AnalysisResult`, so the numbers are those of
`intrudim analyze` on the same weights (totals, energy shares and pressures by the same code).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.results import AnalysisResult
from intrudim.fileio import atomic_path, write_json_atomic

TIMELINE_FORMAT = 1
TIMELINE_FILE = "intrudim_timeline.json"
FIGURE_FILE = "intrudim_intruders.png"
LOG_PREFIX = "intrudim/"

DEFINITIONS = {
    "intruder": "tuned left singular vector j among the top k of W_t with max_i |cos(u_j, u_i(W0))| < epsilon, the "
    "max over all left singular vectors of W0 (Sec. 3-4)",
    "intruder_ranks": "1-based: 1 is the largest singular value of W_t",
    "energy_share": "per step: the mean over the analysed matrices of each matrix's intruder energy share "
    "sum_{j in I} sigma_j^2 / ||W_t||_F^2 (a matrix without intruders counts 0); AnalysisResult.to_json()'s "
    "intruder_energy_share_mean",
    "intruder_pressure": "sigma_1(dW) / sigma_k(W0), dW = W_t - W0 (beyond the paper; Sec. 5's toy model)",
    "max_pressure": "per step: the largest finite intruder_pressure over the analysed matrices",
}


def max_pressure(result: AnalysisResult) -> float | None:
    """The largest finite intruder pressure σ₁(ΔW)/σ_k(W₀) over the matrices (None when none was measured)."""
    values = [m.intruder_pressure for m in result.matrices if m.intruder_pressure is not None]
    finite = [float(v) for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def step_record(result: AnalysisResult, step: int, epoch: float | None, seconds: float) -> dict[str, Any]:
    """One timeline entry: the totals at ``step`` and, per matrix, its count, ranks, energy share and pressure."""
    summary = result.to_json()
    return {
        "step": int(step),
        "epoch": epoch,
        "seconds": round(seconds, 4),
        "total_intruders": int(result.total_intruders),
        "energy_share": float(summary["intruder_energy_share_mean"]),
        "max_pressure": max_pressure(result),
        "matrices_analysed": len(result.matrices),
        "matrices_with_intruders": int(summary["matrices_with_intruders"]),
        "by_module_type": {name: int(n) for name, n in sorted(result.by_module_type().items())},
        "matrices": [
            {
                "name": m.name,
                "layer": m.layer,
                "module_type": m.module_type,
                "intruders": int(m.intruders),
                "intruder_ranks": [int(rank) for rank in m.intruder_ranks],
                "intruder_energy_share": float(m.intruder_energy_share),
                "intruder_pressure": _finite_or_none(m.intruder_pressure),
                "update_alignment": m.update_alignment,
                "largest_intruder_sigma_ratio": m.largest_intruder_sigma_ratio,
                "singular_values": [float(s) for s in m.singular_values],
                "max_abs_cos": [float(c) for c in m.max_abs_cos],
            }
            for m in result.matrices
        ],
    }


def logged_values(record: dict[str, Any]) -> dict[str, int | float]:
    """The scalars a step's record puts into the Trainer's logs: ``intrudim/intruders`` (total),
    ``intrudim/energy_share``, ``intrudim/max_pressure`` (when measured), ``intrudim/intruders/<module type>`` (every
    type, zeros included, so that each curve is continuous) and ``intrudim/step`` (the step they were measured at)."""
    values: dict[str, int | float] = {
        f"{LOG_PREFIX}intruders": record["total_intruders"],
        f"{LOG_PREFIX}energy_share": record["energy_share"],
    }
    if record["max_pressure"] is not None:
        values[f"{LOG_PREFIX}max_pressure"] = record["max_pressure"]
    for module_type, count in record["by_module_type"].items():
        values[f"{LOG_PREFIX}intruders/{module_type}"] = count
    values[f"{LOG_PREFIX}step"] = record["step"]
    return values


def timeline_document(
    records: list[dict[str, Any]],
    *,
    config: AnalyzeConfig,
    tuned_kind: str,
    adapter_name: str | None,
    base: str,
    model: str,
    pressure_threshold: float,
    cold_fill: dict[str, Any] | None,
    stopped: dict[str, Any] | None,
) -> dict[str, Any]:
    """The timeline JSON: steps × matrices, with what was measured against what."""
    return {
        "format": TIMELINE_FORMAT,
        "what": "intruder dimensions over training steps (Fig. 7), measured live by intrudim's IntruderCallback",
        "k": config.k,
        "epsilon": config.epsilon,
        "modules": config.modules,
        "tuned_kind": tuned_kind,
        "adapter_name": adapter_name,
        "base": base,
        "model": model,
        "pressure_threshold": pressure_threshold,
        "cold_fill": cold_fill,
        "stopped": stopped,
        "definitions": DEFINITIONS,
        "steps": records,
    }


def write_timeline(document: dict[str, Any], destination: Path) -> Path:
    return write_json_atomic(destination, document)


def _focus_matrix(records: list[dict[str, Any]]) -> str | None:
    """The matrix drawn in Fig. 7's panels: most intruders at the last step (then the largest intruder σ); None when
    no matrix ever had one."""
    last = records[-1]["matrices"]
    with_intruders = [m for m in last if m["intruders"]]
    if with_intruders:
        return max(with_intruders, key=lambda m: (m["intruders"], m["singular_values"][m["intruder_ranks"][0] - 1]))["name"]
    counts: dict[str, int] = {}
    for record in records:
        for m in record["matrices"]:
            counts[m["name"]] = max(counts.get(m["name"], 0), m["intruders"])
    best = max(counts.items(), key=lambda item: item[1], default=(None, 0))
    return best[0] if best[1] else None


def intruders_figure(records: list[dict[str, Any]], destination: Path, k: int | None = None) -> Path | None:
    """Fig. 7 over the run: intruders against the training step, in total and per module type (left); for the matrix
    with the most intruders at the last analysed step, the rank of each intruder among the top k (middle, 1 = top)
    and its singular value (right). Drawn on a matplotlib Agg canvas without pyplot, so a notebook's backend is left
    as it is. None when nothing was analysed."""
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.0))
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3)
    steps = [r["step"] for r in records]
    left.plot(steps, [r["total_intruders"] for r in records], marker="o", color="black", linewidth=2, label="total")
    module_types = sorted({name for r in records for name in r["by_module_type"]})
    for index, module_type in enumerate(module_types):
        left.plot(steps, [r["by_module_type"].get(module_type, 0) for r in records], marker=".", linewidth=1,
                  color=f"C{index % 10}", label=module_type)  # fmt: skip
    left.set(xlabel="training step", ylabel="intruder dimensions (sum over matrices)", title="Intruders over training")
    left.set_ylim(bottom=0)
    left.legend(fontsize=7, loc="best")
    focus = _focus_matrix(records)
    if focus is None:
        for axis in (middle, right):
            axis.text(0.5, 0.5, "no intruder dimensions", ha="center", va="center", transform=axis.transAxes)
    else:
        for record in records:
            matrix = next((m for m in record["matrices"] if m["name"] == focus), None)
            if matrix is None or not matrix["intruder_ranks"]:
                continue
            ranks = matrix["intruder_ranks"]
            sigmas = [matrix["singular_values"][rank - 1] for rank in ranks]  # ranks are 1-based
            middle.scatter([record["step"]] * len(ranks), ranks, color="tab:red", s=18)
            right.scatter([record["step"]] * len(sigmas), sigmas, color="tab:red", s=18)
        if k is not None:
            middle.set_ylim(k + 0.5, 0.5)  # rank 1 at the top
        else:
            middle.invert_yaxis()
    middle.set(xlabel="training step", ylabel="rank of intruder (1 = top)", title=focus or "Fig. 7 (left)")
    right.set(xlabel="training step", ylabel="singular value of intruder", title="Intruder σ (Fig. 7, right)")
    for axis in (middle, right):
        axis.set_xlim(left.get_xlim())
    figure.tight_layout()
    with atomic_path(destination) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return destination
