"""Figures of a training run: loss/accuracy curves and intruders over steps (Fig. 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intrudim.fileio import atomic_path


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


def write_run_figures(records: list[dict[str, Any]], figures_dir: Path) -> list[Path]:
    """Every figure the records allow, under ``figures_dir``."""
    written = [
        training_curves(records, figures_dir / "training_curves.png"),
        intruders_over_steps(records, figures_dir / "intruders_over_steps.png"),
    ]
    return [path for path in written if path is not None]
