"""The repair sweep's figure (v2): each measure against λ, one line per method (the intruder repair and its controls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intrudim.spectral.repair import METHOD_LABELS


def sweep_panels(result: Any) -> list[tuple[str, str, str]]:
    """(point attribute, axis label, panel title) of every measure the sweep took, with its unit and direction."""
    loss = result.loss
    unit = loss.unit if loss else ""
    name = loss.name if loss else "loss"
    panels = []
    if result.text is not None:
        panels.append(("forgetting_loss", f"{name} ({unit})\nlower = less forgetting",
                       f"Forgetting: loss on the text '{Path(str(result.text['source'])).name}'"))  # fmt: skip
    if result.task_text is not None:
        panels.append(("task_loss", f"{name} ({unit})\nlower is better",
                       f"Task cost: loss on the task text {Path(str(result.task_text['source'])).name}"))  # fmt: skip
    if result.task is not None:
        panels.append(("accuracy", "held-out accuracy (fraction correct)\nhigher is better",
                       f"Task: accuracy on {result.task}"))  # fmt: skip
    return [(key, label, title) for key, label, title in panels
            if any(getattr(p, key) is not None for p in result.points)]  # fmt: skip


def sweep_figure(result: Any) -> bytes:
    """PNG: each measure against λ, one line per method (the v2 figure); BASE's loss as a dotted line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sweep_panels(result)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.9), squeeze=False)
    styles = {"none": ("C3", "o"), "non-intruder": ("C0", "s"), "shrink": ("C2", "^")}
    references = {"forgetting_loss": result.base_loss, "task_loss": result.base_task_loss}
    for ax, (key, label, title) in zip(axes[0], panels, strict=False):
        for method in dict.fromkeys(p.method for p in result.points):
            points = [p for p in result.points if p.method == method]
            color, marker = styles[method]
            ax.plot([p.lam for p in points], [getattr(p, key) for p in points], marker=marker, color=color,
                    label=METHOD_LABELS[method])  # fmt: skip
        if references.get(key) is not None:
            ax.axhline(references[key], color="grey", linestyle=":", label="BASE")
        ax.set_xlabel("λ (1 = TUNED as trained)")
        ax.set_ylabel(label, fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Repair sweep: {result.total_intruders} intruders in {result.matrices_with_intruders} matrices "
                 f"(k={result.k}, ε={result.epsilon})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
