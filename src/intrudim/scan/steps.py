"""A scan of one training run's checkpoints: intruders over training steps (Fig. 7 from a Trainer's output_dir).

When the scanned inputs are ``checkpoint-N`` folders (``intrudim scan BASE OUTPUT_DIR`` expands a Trainer
``output_dir`` to them, ordered by step), each leaderboard row carries its step, and the leaderboard adds a table
and a figure of the intruder count over steps.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from intrudim.models.references import CHECKPOINT_DIR, checkpoint_step


def step_of(spec: str) -> int | None:
    """The training step of a ``checkpoint-N`` input (its trainer_state.json's global_step, else N); else None."""
    path = Path(spec).expanduser()
    match = CHECKPOINT_DIR.match(path.name)
    return checkpoint_step(path, int(match[1])) if match else None


def steps_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(step, name, intruders, matrices with intruders, mean energy share) of every checkpoint row, by step; empty
    unless at least two rows are checkpoints."""
    table = [
        {"step": r["step"], "name": r["name"], "total_intruders": r["total_intruders"],
         "matrices_with_intruders": r["matrices_with_intruders"], "energy_share_mean": r["energy_share_mean"]}
        for r in rows if r.get("step") is not None and r["error"] is None
    ]  # fmt: skip
    return sorted(table, key=lambda item: item["step"]) if len(table) >= 2 else []


def steps_figure_png(table: list[dict[str, Any]], k: int, epsilon: float) -> bytes:
    """Intruder dimensions vs training step (total over matrices), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    steps = [item["step"] for item in table]
    axis.plot(steps, [item["total_intruders"] for item in table], marker="o", color="#c0392b")
    axis.set_xlabel("training step (checkpoint)")
    axis.set_ylabel("intruder dimensions (all matrices)")
    axis.set_title(f"Intruder dimensions over training steps (k={k}, ε={epsilon})")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
