"""Matplotlib figures for the analysis and toy reports (Agg backend; no files written here).

Each analysis figure has a ``*_figure`` function that returns the matplotlib Figure (for tests and notebooks) and
a function of the older name that renders it to PNG bytes. Every axis that counts intruder dimensions has integer
ticks and starts at 0; a plot whose counts are all zero says so in words in its body.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from intrudim.spectral.intruders import random_vector_max_cosine  # noqa: E402

LORA_COLOR = "#d62728"
BASE_COLOR = "#1f77b4"

# Series drawn on one axis differ in marker and line style as well as colour, and markers are hollow and shrink
# from one series to the next: series that coincide stay visible as nested shapes instead of hiding each other.
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
SERIES_LINESTYLES = ("-", "--", "-.", ":")

HIGHLIGHT_RULE = (
    "the matrices with the most intruders, ties broken by the lowest max |cos| among their intruders (the newest "
    "direction); among matrices without intruders, the lowest max |cos| of any top-k vector"
)
"""How :func:`highlighted_matrices` chooses the matrices shown as heatmaps, in words for captions."""


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def series_style(index: int) -> dict[str, Any]:
    """Marker, line style and marker size of the ``index``-th series on an axis (see SERIES_MARKERS)."""
    return {
        "marker": SERIES_MARKERS[index % len(SERIES_MARKERS)],
        "linestyle": SERIES_LINESTYLES[index % len(SERIES_LINESTYLES)],
        "markersize": max(4.0, 9.0 - 1.2 * index),
        "markerfacecolor": "none",
        "markeredgewidth": 1.4,
    }


def count_axis(ax: Axes, *, empty_message: str | None = None) -> None:
    """Make the y axis of ``ax`` an axis of counts: integer ticks, range from 0 (to at least 1). With
    ``empty_message``, write it in the middle of the plot (used when every count is 0)."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(ax.get_ylim()[1], 1))
    if empty_message:
        ax.text(0.5, 0.55, empty_message, transform=ax.transAxes, ha="center", va="center", fontsize=9,
                color="#444444", wrap=True, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#bbbbbb"})  # fmt: skip


def _lowest_max_cos(matrix: Any) -> float:
    """The lowest max |cos| among the matrix's intruders; without intruders, among all its top-k vectors."""
    values = [matrix.max_abs_cos[r - 1] for r in matrix.intruder_ranks] or list(matrix.max_abs_cos)
    return min(values, default=1.0)


def highlighted_matrices(matrices: Sequence[Any], count: int = 3) -> list[Any]:
    """The ``count`` matrices worth a heatmap, by :data:`HIGHLIGHT_RULE`: the most intruders first, then the lowest
    max |cos| among a matrix's intruders (the direction least like any base direction); remaining ties keep the
    model's order. Intruder ranks are 1-based, so intruder r's max |cos| is ``max_abs_cos[r - 1]``."""
    ranked = sorted(matrices, key=lambda m: (-m.intruders, _lowest_max_cos(m)))
    return ranked[:count]


def heatmap_ticks(columns: int, step: int = 5) -> list[int]:
    """0-based column positions labelled 1, 5, 10, 15, … (1-based ranks, as on the tuned axis)."""
    return [0] + list(range(step - 1, columns, step)) if columns else []


def similarity_heatmap_figure(matrix: Any, epsilon: float) -> Figure:
    """|cos| between the tuned top-k left vectors (rows) and the top base left vectors (columns) — Figs. 1/3."""
    sim = matrix.similarity
    k = len(sim)
    fig, ax = plt.subplots(figsize=(7.5, 2.2 + 0.18 * k))
    image = ax.imshow(sim, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(k), [f"{j + 1}{' ◀ intruder' if (j + 1) in matrix.intruder_ranks else ''}" for j in range(k)],
                  fontsize=7)  # fmt: skip
    # Base vectors are numbered like the tuned ones: rank 1 is the largest singular value (imshow counts from 0).
    columns = len(sim[0]) if k else 0
    ax.set_xticks(heatmap_ticks(columns), [str(i + 1) for i in heatmap_ticks(columns)], fontsize=7)
    ax.set_xlabel("base singular vector rank (W₀)")
    ax.set_ylabel("tuned vector rank")
    ax.set_title(f"{matrix.name}\n{matrix.intruders} intruder(s) at ε={epsilon}", fontsize=9)
    fig.colorbar(image, ax=ax, label="|cos|")
    return fig


def similarity_heatmap(matrix: Any, epsilon: float) -> bytes:
    return _png(similarity_heatmap_figure(matrix, epsilon))


def _all_zero(sweeps: dict[str, dict[Any, int]]) -> bool:
    return all(n == 0 for sweep in sweeps.values() for n in sweep.values())


def epsilon_sweep_figure(sweeps: dict[str, dict[float, int]], k: int) -> Figure:
    """Total intruders vs ε (Fig. 5); one line per labelled model."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, sweep) in enumerate(sweeps.items()):
        xs = sorted(sweep)
        ax.plot(xs, [sweep[x] for x in xs], label=label, clip_on=False, **series_style(i))
    ax.set_xlabel("cosine similarity threshold ε")
    ax.set_ylabel(f"intruder dimensions (k={k}, summed)")
    ax.set_title("Intruders vs ε (Fig. 5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    count_axis(ax, empty_message=f"no intruder dimensions at any ε (k={k})" if _all_zero(sweeps) else None)
    return fig


def epsilon_sweep_plot(sweeps: dict[str, dict[float, int]], k: int) -> bytes:
    return _png(epsilon_sweep_figure(sweeps, k))


def k_sweep_figure(sweeps: dict[str, dict[str, int]], epsilon: float) -> Figure:
    """Total intruders vs k (Fig. 11)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, sweep) in enumerate(sweeps.items()):
        names = list(sweep)
        ax.plot(range(len(names)), [sweep[n] for n in names], label=label, clip_on=False, **series_style(i))
        ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("k (top tuned vectors examined; % of the matrix's singular vectors)")
    ax.set_ylabel(f"intruder dimensions (ε={epsilon}, summed)")
    ax.set_title("Intruders vs k (Fig. 11)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    count_axis(ax, empty_message=f"no intruder dimensions at any k (ε={epsilon})" if _all_zero(sweeps) else None)
    return fig


def k_sweep_plot(sweeps: dict[str, dict[str, int]], epsilon: float) -> bytes:
    return _png(k_sweep_figure(sweeps, epsilon))


def counts_bar_figure(counts: dict[str, int], title: str, xlabel: str, *, empty_message: str | None = None) -> Figure:
    """Intruder counts as bars. When every count is 0 the plot says so (``empty_message``, or a default)."""
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(counts) + 2), 3.4))
    names = list(counts)
    ax.bar(range(len(names)), [counts[n] for n in names], color=LORA_COLOR)
    ax.set_xticks(range(len(names)), names, rotation=35 if max((len(n) for n in names), default=0) > 4 else 0,
                  ha="right", fontsize=8)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("intruder dimensions")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    empty = not any(counts.values())
    count_axis(ax, empty_message=(empty_message or "no intruder dimensions (every count is 0)") if empty else None)
    return fig


def counts_bar(counts: dict[str, int], title: str, xlabel: str, *, empty_message: str | None = None) -> bytes:
    return _png(counts_bar_figure(counts, title, xlabel, empty_message=empty_message))


class Series(NamedTuple):
    """One line of a plot: the matrix types it stands for (several when their values coincide), x and y."""

    names: tuple[str, ...]
    x: list[int]
    y: list[float]

    @property
    def label(self) -> str:
        return self.names[0] if len(self.names) == 1 else " = ".join(self.names) + " (identical)"


def effective_rank_series(matrices: Sequence[Any]) -> list[Series]:
    """Effective rank of ΔW per layer, one series per matrix type; types whose series coincide (same layers, values
    equal to 1e-6 relative) are merged into one series named after all of them, so none is hidden under another."""
    by_type: dict[str, list[tuple[int, float]]] = {}
    for m in matrices:
        if m.effective_rank_delta is not None:
            by_type.setdefault(m.module_type, []).append((m.layer if m.layer is not None else 0, m.effective_rank_delta))
    merged: list[Series] = []
    for name, points in sorted(by_type.items()):
        points.sort()
        x, y = [p[0] for p in points], [p[1] for p in points]
        for i, series in enumerate(merged):
            same = series.x == x and all(
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(series.y, y, strict=True)
            )
            if same:
                merged[i] = series._replace(names=(*series.names, name))
                break
        else:
            merged.append(Series((name,), x, y))
    return merged


def effective_rank_figure(matrices: Sequence[Any]) -> Figure:
    """Effective rank of ΔW per layer, one line per matrix type (Fig. 6); coinciding types share one line."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    all_series = effective_rank_series(matrices)
    import textwrap

    for i, series in enumerate(all_series):  # a merged series' label ("a = b = c (identical)") wrapped, not overflowing
        ax.plot(series.x, series.y, label=textwrap.fill(series.label, 34), clip_on=False, **series_style(i))
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer indices, not 0.2, 0.4, …
    # From 0, so that ranks read against each other and against r; headroom keeps the top line off the frame.
    ax.set_ylim(0, max(1.0, 1.2 * max((max(s.y) for s in all_series), default=0.0)))
    ax.set_ylabel("effective rank of ΔW")
    ax.set_title("Effective rank of the update (Fig. 6)")
    ax.grid(alpha=0.3)
    # below the axes, where no point can be hidden under it (inside, it sat where the lowest points fall)
    ax.legend(fontsize=7, ncol=min(3, max(1, len(all_series))), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return fig


def effective_rank_plot(matrices: Sequence[Any]) -> bytes:
    return _png(effective_rank_figure(matrices))


def singular_values_figure(matrices: Sequence[Any]) -> Figure:
    """Top-k singular values of W_t vs W₀ for the highlighted matrices; intruders marked."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.4), squeeze=False)
    for ax, m in zip(axes[0], matrices, strict=True):
        ranks = list(range(1, len(m.singular_values) + 1))
        ax.plot(ranks, m.base_singular_values, marker="o", color=BASE_COLOR, label="base W₀")
        ax.plot(ranks, m.singular_values, marker="s", markerfacecolor="none", linestyle="--", color="#555555",
                label="tuned W_t")  # fmt: skip
        if m.intruder_ranks:
            ax.scatter(m.intruder_ranks, [m.singular_values[r - 1] for r in m.intruder_ranks], s=90,
                       facecolors="none", edgecolors=LORA_COLOR, linewidths=2, label="intruder", zorder=5)  # fmt: skip
        ax.set_xlabel("rank")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(m.name, fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("singular value σ")
    axes[0][0].legend(fontsize=7)
    return fig


def singular_values_plot(matrices: Sequence[Any]) -> bytes:
    return _png(singular_values_figure(matrices))


def max_cos_scatter_figure(matrices: Sequence[Any], epsilon: float) -> Figure:
    """max |cos| to the base of every top-k tuned vector, by rank; the ε line and the random baseline."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m in matrices:
        ax.scatter(range(1, len(m.max_abs_cos) + 1), m.max_abs_cos, s=10, alpha=0.45,
                   color=LORA_COLOR if m.intruders else BASE_COLOR)  # fmt: skip
    ax.axhline(epsilon, color="black", linestyle="--", linewidth=1, label=f"ε = {epsilon}")
    if matrices:
        n = matrices[0].shape[0]
        ax.axhline(random_vector_max_cosine(n), color="gray", linestyle=":", label=f"random vector, n={n} (App. C)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("tuned singular vector rank")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("max |cos| to any base vector")
    ax.set_title("How new is each top tuned direction?")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def max_cos_scatter(matrices: Sequence[Any], epsilon: float) -> bytes:
    return _png(max_cos_scatter_figure(matrices, epsilon))


def toy_sweep_plot(sweep: Any) -> bytes:
    """Sec. 5: the vector most aligned with v climbs to rank 1 and becomes an intruder; the thresholds found are marked."""
    ratios = [p.lam_over_sigma_max for p in sweep.points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(ratios, [p.v_max_cos_to_base for p in sweep.points], marker="o", color=LORA_COLOR,
             label="max |cos| to W's vectors (vector most aligned with v)")  # fmt: skip
    ax1.plot(ratios, [p.v_alignment for p in sweep.points], marker="s", color="#555555", label="|cos| with v")
    ax1.axhline(sweep.epsilon, color="black", linestyle="--", linewidth=1, label=f"ε = {sweep.epsilon}")
    if sweep.gaussian:
        ax1.plot(ratios, [p.v_alignment_theory for p in sweep.points], color="#555555", linestyle=":",
                 label="|cos| with v, theory (n → ∞)")  # fmt: skip
    ax1.axvline(1.0, color="gray", linestyle=":", label="λ = σ_max(W) (Sec. 5)")
    if sweep.first_intruder_ratio is not None:
        ax1.axvline(sweep.first_intruder_ratio, color=LORA_COLOR, linestyle="--", linewidth=1,
                    label=f"first intruder: λ = {sweep.first_intruder_ratio:g}·σ_max")  # fmt: skip
    ax1.set_xlabel("λ / σ_max(W)")
    ax1.set_ylabel("|cos|")
    # Legends go under the panels: where the lines leave room inside depends on n and the seed ("best" covered them).
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax1.grid(alpha=0.3)
    ax2.plot(ratios, [p.v_rank for p in sweep.points], marker="o", color=BASE_COLOR,
             label="rank of the vector most aligned with v")  # fmt: skip
    ax2.set_yscale("log")
    ax2.set_ylabel("rank (1 = top)", color=BASE_COLOR)
    ax2.axvline(1.0, color="gray", linestyle=":")
    if sweep.v_top_ratio is not None:
        ax2.axvline(sweep.v_top_ratio, color=BASE_COLOR, linestyle="--", linewidth=1,
                    label=f"v's direction rank 1: λ = {sweep.v_top_ratio:g}·σ_max")  # fmt: skip
    counts = ax2.twinx()
    counts.plot(ratios, [p.intruders for p in sweep.points], marker="^", color=LORA_COLOR,
                label=f"intruders in top {sweep.k}")  # fmt: skip
    counts.set_ylabel("intruders", color=LORA_COLOR)
    counts.set_ylim(bottom=0)
    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("λ / σ_max(W)")
    handles = ax2.get_legend_handles_labels()
    extra = counts.get_legend_handles_labels()
    counts.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.16))  # fmt: skip
    ax2.grid(alpha=0.3)
    fig.suptitle(f"W + λ·v vᵀ, n = {sweep.n} (Sec. 5)")
    return _png(fig)


def random_baseline_plot(points: Sequence[Any]) -> bytes:
    """App. C: max |cos| of a random unit vector against an orthonormal basis vs n."""
    ns = [p.n for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(ns, [p.mean_max_cos for p in points], yerr=[p.std_max_cos for p in points], marker="o",
                color=LORA_COLOR, label="measured (mean ± std)", capsize=3)  # fmt: skip
    ax.plot(ns, [p.theory for p in points], color="black", linestyle="--", label="√(2 ln(2n)/n)")
    ax.plot(ns, [p.minimum_possible for p in points], color="gray", linestyle=":", label="minimum 1/√n")
    ax.set_xscale("log")
    ax.set_xlabel("dimension n")
    ax.set_ylabel("max |cos| to the basis")
    ax.set_title("A random direction is far from every basis vector (App. C)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
