"""Figures of a training run: loss/accuracy curves and intruders over steps (Fig. 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intrudim.fileio import atomic_path
from intrudim.spectral.prediction import DEFAULT_PRESSURE_THRESHOLD


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, destination: Path) -> Path:
    with atomic_path(destination) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return destination


def training_curves(records: list[dict[str, Any]], destination: Path) -> Path | None:
    """Training loss and held-out accuracy against steps."""
    losses = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]
    accuracies = [(r["step"], r["accuracy"]) for r in records if r.get("event") == "eval"]
    if not losses and not accuracies:
        return None
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if losses:
        left.plot(*zip(*losses, strict=True), color="tab:blue")
    left.set(xlabel="step", ylabel="training loss", title="Loss")
    if accuracies:
        right.plot(*zip(*accuracies, strict=True), marker="o", color="tab:green")
    right.set(xlabel="step", ylabel="held-out accuracy", title="Accuracy", ylim=(0, 1.02))
    figure.tight_layout()
    _save(figure, destination)
    plt.close(figure)
    return destination


def _tracked(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (r["step"], r["intruders"])
        for r in records
        if r.get("event") in ("checkpoint", "final") and isinstance(r.get("intruders"), dict)
    ]


def intruders_over_steps(records: list[dict[str, Any]], destination: Path) -> Path | None:
    """Fig. 7: total intruders over steps (left); for the matrix with the most intruders at the end, the rank
    of each intruder among the top-k (middle) and its singular value (right) at each checkpoint."""
    tracked = _tracked(records)
    if len(tracked) < 2:
        return None  # no checkpoints: one point (the final weights) is no curve over steps
    last = tracked[-1][1]["matrices"]
    if not last:
        return None
    focus = max(last, key=lambda m: (m["intruders"], max(m["singular_values"] or [0.0])))["name"]
    plt = _pyplot()
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.8))
    steps = [step for step, _ in tracked]
    left.plot(steps, [record["total_intruders"] for _, record in tracked], marker="o")
    left.set(xlabel="step", ylabel="intruder dimensions (sum over matrices)", title="All matrices")
    for step, record in tracked:
        matrix = next((m for m in record["matrices"] if m["name"] == focus), None)
        if matrix is None:
            continue
        ranks = matrix["intruder_ranks"]
        sigmas = [matrix["singular_values"][rank - 1] for rank in ranks]  # ranks are 1-based
        middle.scatter([step] * len(ranks), ranks, color="tab:red", s=18)
        right.scatter([step] * len(sigmas), sigmas, color="tab:red", s=18)
    middle.set(xlabel="step", ylabel="rank of intruder (1 = top)", title=f"{focus}")
    middle.invert_yaxis()
    right.set(xlabel="step", ylabel="singular value of intruder", title="Intruder σ")
    figure.tight_layout()
    _save(figure, destination)
    plt.close(figure)
    return destination


PRESSURE_LINES = 6  # matrices drawn in pressure_over_steps: the highest final pressures


def pressure_over_steps(records: list[dict[str, Any]], destination: Path, threshold: float = DEFAULT_PRESSURE_THRESHOLD) -> Path | None:
    """Intruder pressure σ₁(ΔW)/σ_k(W₀) over steps for the matrices with the highest final pressure; a filled
    marker where the matrix had an intruder at that checkpoint, the prediction threshold dashed."""
    tracked = _tracked(records)
    if len(tracked) < 2 or not any("intruder_pressure" in m for m in tracked[-1][1]["matrices"]):
        return None
    last = [m for m in tracked[-1][1]["matrices"] if m.get("intruder_pressure")]
    if not last:
        return None
    names = [m["name"] for m in sorted(last, key=lambda m: -m["intruder_pressure"])[:PRESSURE_LINES]]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.0))
    for index, name in enumerate(names):
        series = [(step, m) for step, record in tracked for m in record["matrices"]
                  if m["name"] == name and m.get("intruder_pressure")]  # fmt: skip
        colour = f"C{index}"
        axis.plot([step for step, _ in series], [m["intruder_pressure"] for _, m in series], color=colour, label=name)
        hit = [(step, m["intruder_pressure"]) for step, m in series if m["intruders"]]
        if hit:
            axis.scatter(*zip(*hit, strict=True), color=colour, s=28, zorder=3)
    axis.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axis.set_yscale("log")
    axis.set(xlabel="step", ylabel="intruder pressure σ₁(ΔW)/σ_k(W₀)",
             title="Pressure over training (filled: the matrix has an intruder)")  # fmt: skip
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    _save(figure, destination)
    plt.close(figure)
    return destination


def pressure_figure(observations: list[Any], report: dict[str, Any], destination: Path) -> Path | None:
    """Intruder pressure σ₁(ΔW)/σ_k(W₀) (log x) against the alignment of ΔW's top direction with the base's top-k
    space, one point per tracked (run, step, matrix): red with intruders, grey without; the default threshold
    dashed, the fitted one solid."""
    points = [o for o in observations if o.pressure is not None and o.pressure > 0 and o.alignment is not None]
    if not points:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for has, colour, label in ((False, "tab:gray", "no intruder"), (True, "tab:red", "intruders")):
        group = [o for o in points if bool(o.intruders) == has]
        if group:
            axis.scatter([o.pressure for o in group], [o.alignment for o in group], s=10, alpha=0.6, color=colour,
                         label=f"{label} ({len(group)})")  # fmt: skip
    default = report["default"]
    axis.axvline(default["threshold"], color="black", linestyle="--", linewidth=1,
                 label=f"threshold {default['threshold']:g}: {_pr(default)}")  # fmt: skip
    fitted = report.get("fitted")
    if fitted is not None and isinstance(fitted["threshold"], float):
        axis.axvline(fitted["threshold"], color="tab:blue", linewidth=1.2,
                     label=f"fitted {fitted['threshold']:.3g}: {_pr(fitted)}")  # fmt: skip
    axis.set_xscale("log")
    axis.set(xlabel="intruder pressure σ₁(ΔW)/σ_k(W₀)", ylabel="alignment of ΔW's top direction with top-k(W₀)",
             ylim=(-0.02, 1.02), title="Predicting intruder-prone matrices")  # fmt: skip
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    figure.tight_layout()
    _save(figure, destination)
    plt.close(figure)
    return destination


def _pr(score: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return f"precision {fmt(score['precision'])}, recall {fmt(score['recall'])}"


def write_run_figures(records: list[dict[str, Any]], figures_dir: Path) -> list[Path]:
    """Every figure the records allow, under ``figures_dir``."""
    written = [
        training_curves(records, figures_dir / "training_curves.png"),
        intruders_over_steps(records, figures_dir / "intruders_over_steps.png"),
        pressure_over_steps(records, figures_dir / "pressure_over_steps.png"),
    ]
    return [path for path in written if path is not None]


def lr_map_figure(result: Any) -> Any:
    """The learning-rate × rank map (:class:`intrudim.train.lr_map.LrMapResult`): three panels (intruders, held-out
    accuracy, forgetting), rows the LoRA α·η, columns the ranks; full fine-tuning's runs are extra columns, one per
    η, each drawn as one tall cell (its η is not on the α·η axis). Every cell states its value."""
    import numpy as np

    plt = _pyplot()
    lrs, ranks = list(result.lrs), result.lora_ranks()
    fulls = [c for c in result.cells if c.is_full]
    columns = [f"r={r}" for r in ranks] + [f"full\nη={c.lr:g}" for c in fulls]
    panels = [("intruders", "intruder dimensions", "Reds", "{:.0f}"),
              ("accuracy", "held-out accuracy", "Greens", "{:.2f}"),
              ("forgetting", "forgetting (Δ loss, tuned − base)", "Purples", "{:+.2f}")]  # fmt: skip
    if result.forgetting is None:
        panels = panels[:2]
    figure, axes = plt.subplots(len(panels), 1, figsize=(2.6 + 0.85 * len(columns), len(panels) * (1.3 + 0.42 * len(lrs))),
                                squeeze=False)  # fmt: skip
    for axis, (field, title, cmap, fmt) in zip(axes[:, 0], panels, strict=True):
        grid = np.full((len(lrs), len(columns)), np.nan)
        for i, lr in enumerate(lrs):
            for j, rank in enumerate(ranks):
                cell = result.cell(rank, lr)
                value = None if cell is None else getattr(cell, field)
                grid[i, j] = np.nan if value is None else value
        full_values = [getattr(c, field) for c in fulls]
        for j, value in enumerate(full_values, start=len(ranks)):
            grid[:, j] = np.nan if value is None else value
        finite = grid[np.isfinite(grid)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = axis.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", vmin=low, vmax=high if high > low else low + 1)
        for i in range(len(lrs)):
            for j in range(len(ranks)):
                value = grid[i, j]
                dark = np.isfinite(value) and high > low and (value - low) / (high - low) > 0.6  # white on dark cells
                axis.text(j, i, "–" if not np.isfinite(value) else fmt.format(value), ha="center", va="center",
                          fontsize=8, color="white" if dark else "black")  # fmt: skip
        for j, value in enumerate(full_values, start=len(ranks)):
            axis.axvspan(j - 0.5, j + 0.5, facecolor="none", edgecolor="#333333", linewidth=1.2)
            axis.text(j, (len(lrs) - 1) / 2, "–" if value is None else fmt.format(value), ha="center", va="center",
                      fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7})  # fmt: skip
        axis.set_xticks(range(len(columns)), columns, fontsize=8)
        axis.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=8)
        axis.set_xlabel("LoRA rank (α = 2r) · full fine-tuning")
        axis.set_ylabel("LoRA α·η")
        axis.set_title(title, fontsize=10)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
    measured = ""
    if result.forgetting is not None:
        from intrudim.evaluate.forgetting_config import MEASURE_NAMES, MEASURE_UNITS

        measure = result.forgetting["measure"]
        measured = (f"; forgetting: {MEASURE_NAMES.get(measure, measure)} on '{result.forgetting['text'].get('source', 'text')}', "
                    f"tuned − base ({MEASURE_UNITS.get(measure, 'nats')})")  # fmt: skip
    figure.suptitle(f"Learning rate × rank: intruders (k=10, ε=0.5), accuracy{measured}", fontsize=10)
    figure.tight_layout()
    return figure
