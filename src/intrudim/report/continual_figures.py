"""Figures of a continual run (Fig. 8 / 17 and the v2 accumulation), from its continual.json; PNG bytes.

``accuracy_figure``: one panel per task, accuracy against the stage, one line per method; the stage at which
the task is trained is a solid black vertical line (the other stage boundaries thin grey ones), the stages
before it are shaded grey, and each method's baseline (the task's accuracy right after its own stage) is a
dotted line in the method's colour. ``accumulation_figure``: intruders of the weights after each stage,
counted against the original base, one line per method, with their energy share in a second panel.
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def method_colors(labels: list[str]) -> dict[str, Any]:
    """LoRA ranks from red (low rank) to orange/yellow, full fine-tuning blue: the paper's colour habit."""
    lora = [label for label in labels if label != "full"]
    cmap = plt.get_cmap("autumn")
    colors = {label: cmap(0.75 * i / max(1, len(lora) - 1)) for i, label in enumerate(lora)}
    colors["full"] = "#1f77b4"
    return colors


def _stage_ticks(data: dict[str, Any]) -> list[str]:
    return ["base", *[f"{i}: {task}" for i, task in enumerate(data["tasks"], start=1)]]


def accuracy_figure(data: dict[str, Any]) -> bytes:
    """Fig. 8: held-out accuracy of each task after every stage, one panel per task, one line per method."""
    tasks: list[str] = data["tasks"]
    methods: dict[str, Any] = data["methods"]
    colors = method_colors(list(methods))
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), squeeze=False)
    stages = list(range(len(tasks) + 1))
    for index, task in enumerate(tasks):
        ax = axes[index // columns][index % columns]
        trained_at = index + 1
        ax.axvspan(-0.5, trained_at - 0.02, color="0.88", zorder=0, label="before training on this task")
        for stage in stages[1:]:
            ax.axvline(stage, color="black" if stage == trained_at else "0.75",
                       linewidth=1.6 if stage == trained_at else 0.7, zorder=1)  # fmt: skip
        for label, method in methods.items():
            values = [row[index] for row in method["accuracy"]]
            points = [(s, v) for s, v in zip(stages, values, strict=False) if v is not None]
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3.5,
                        color=colors[label], label=label, zorder=3)  # fmt: skip
            baseline = method["baselines"].get(task)
            if baseline is not None:
                ax.axhline(baseline, color=colors[label], linestyle=":", linewidth=1.2, zorder=2)
        ax.set_title(f"{task} (trained at stage {trained_at})", fontsize=10)
        ax.set_xticks(stages)
        ax.set_xticklabels(_stage_ticks(data), rotation=35, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(tasks) + 0.5)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.25, axis="y")
    for extra in range(len(tasks), rows * columns):
        axes[extra // columns][extra % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.3", linestyle=":"))
    labels.append("baseline: accuracy right after its own stage")
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(labels) / 4)))  # fmt: skip
    fig.suptitle("Continual learning: accuracy of each task as later tasks are trained (Fig. 8)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def accumulation_figure(data: dict[str, Any]) -> bytes:
    """Intruders of the weights after each stage against the original base, one line per method (v2)."""
    methods: dict[str, Any] = data["methods"]
    colors = method_colors(list(methods))
    stages = list(range(len(data["tasks"]) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for label, method in methods.items():
        axes[0].plot(stages, method["intruders"], marker="o", color=colors[label], label=label)
        axes[1].plot(stages, [100 * share for share in method["energy_share"]], marker="o", color=colors[label],
                     label=label)  # fmt: skip
    axes[0].set_ylabel(f"intruder dimensions (k={data['k']}, ε={data['epsilon']})")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_ylabel("intruder energy share (%, mean per matrix)")
    for ax in axes:
        ax.set_xticks(stages)
        ax.set_xticklabels(_stage_ticks(data), rotation=35, ha="right", fontsize=8)
        ax.set_xlabel("after stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Intruder dimensions after each stage, counted against the original base", fontsize=11, y=1.02)
    fig.tight_layout()
    return _png(fig)
