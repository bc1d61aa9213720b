"""The analysis figures as matplotlib builds them, before PNG (issue "What a user sees", Figures): count axes have
integer ticks from 0, an all-zero plot says so in words, coinciding series stay distinguishable, and the heatmaps
shown follow a stated rule. Synthetic matrices; no model, no browser (well under a second each)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest

from intrudim.report import figures


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _matrix(name: str, max_abs_cos: list[float], epsilon: float = 0.5, **fields) -> SimpleNamespace:
    """A stand-in for MatrixResult with the fields the figures read; intruder ranks are 1-based, as in results.py."""
    ranks = [j + 1 for j, c in enumerate(max_abs_cos) if c < epsilon]
    defaults = {"layer": 0, "module_type": "attn.q", "effective_rank_delta": None, "similarity": None,
                "shape": (48, 48)}  # fmt: skip
    return SimpleNamespace(name=name, max_abs_cos=max_abs_cos, intruder_ranks=ranks, intruders=len(ranks),
                           **{**defaults, **fields})  # fmt: skip


def _assert_count_axis(ax) -> None:
    ticks = list(ax.get_yticks())
    assert ticks and all(float(t).is_integer() for t in ticks), f"fractional count ticks: {ticks}"
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top >= 1, (bottom, top)
    assert [t for t in ticks if bottom <= t <= top][0] == 0


# Small counts are where matplotlib's default locator puts 0.25, 0.5, …: 1 and 2 intruders.
@pytest.mark.parametrize("counts", [{"0": 1, "1": 2}, {"0": 0, "1": 1}, {"0": 0, "1": 0}, {"q": 7, "v": 30}])
def test_counts_bar_has_integer_ticks_from_zero(counts):
    fig = figures.counts_bar_figure(counts, "Intruders per layer", "layer")
    _assert_count_axis(fig.axes[0])


@pytest.mark.parametrize("values", [[0, 0, 1, 1, 2, 2, 2, 2, 2], [0] * 9, [0, 1, 3, 8, 12, 20, 31, 40, 55]])
def test_sweeps_have_integer_ticks_from_zero(values):
    epsilons = [round(0.1 * i, 1) for i in range(1, 10)]
    eps_fig = figures.epsilon_sweep_figure({"a": dict(zip(epsilons, values, strict=True))}, k=10)
    _assert_count_axis(eps_fig.axes[0])
    labels = ["k=10", "20%", "40%", "60%", "80%", "100%"]
    k_fig = figures.k_sweep_figure({"a": dict(zip(labels, values[:6], strict=True))}, epsilon=0.5)
    _assert_count_axis(k_fig.axes[0])


def test_all_zero_counts_are_said_in_words_in_the_figure():
    bar = figures.counts_bar_figure({"0": 0, "1": 0}, "Intruders per layer", "layer",
                                    empty_message="no intruder dimensions in any matrix (k=10, ε=0.5)")  # fmt: skip
    assert [t.get_text() for t in bar.axes[0].texts] == ["no intruder dimensions in any matrix (k=10, ε=0.5)"]
    sweep = figures.epsilon_sweep_figure({"a": {0.1: 0, 0.5: 0, 0.9: 0}}, k=10)
    assert [t.get_text() for t in sweep.axes[0].texts] == ["no intruder dimensions at any ε (k=10)"]
    # A plot with something to show carries no such message.
    assert not figures.counts_bar_figure({"0": 0, "1": 3}, "t", "layer").axes[0].texts
    assert not figures.epsilon_sweep_figure({"a": {0.1: 0, 0.5: 2}}, k=10).axes[0].texts


def test_effective_rank_coinciding_series_are_drawn_once_and_the_rest_differ_in_marker_and_line():
    matrices = []
    for layer in (0, 1, 2):
        for kind, value in (("attn.q", 2.0), ("attn.v", 2.0), ("mlp.up", 2.0 + 1e-3), ("mlp.down", 1.5)):
            matrices.append(_matrix(f"{kind}.{layer}", [0.9], layer=layer, module_type=kind,
                                    effective_rank_delta=value))  # fmt: skip
    series = figures.effective_rank_series(matrices)
    assert [s.names for s in series] == [("attn.q", "attn.v"), ("mlp.down",), ("mlp.up",)]
    fig = figures.effective_rank_figure(matrices)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["attn.q = attn.v (identical)", "mlp.down", "mlp.up"]
    # mlp.up is 0.05 % off attn.q: not merged, so it must not look like attn.q where they overlap.
    styles = [(line.get_marker(), line.get_linestyle()) for line in lines]
    assert len({m for m, _ in styles}) == len(lines) and len({s for _, s in styles}) == len(lines), styles
    assert all(line.get_markerfacecolor() == "none" for line in lines), "hollow markers show what lies beneath"
    assert fig.axes[0].get_ylim()[0] == 0


def test_highlighted_matrices_most_intruders_then_lowest_intruder_cosine():
    """Planted: the old rule (ties: highest-ranked intruder, then model order) picked first, late and first_zero."""
    first = _matrix("first", [0.45, 0.9, 0.9])  # one intruder, rank 1, barely under ε
    late = _matrix("late", [0.9, 0.9, 0.05])  # one intruder at rank 3, almost orthogonal to the base
    two = _matrix("two", [0.3, 0.49, 0.9])  # two intruders
    middle = _matrix("middle", [0.2, 0.9, 0.9])
    first_zero = _matrix("first_zero", [0.99, 0.98, 0.97])
    near_zero = _matrix("near_zero", [0.99, 0.6, 0.97])  # no intruder, but the nearest to one
    chosen = figures.highlighted_matrices([first_zero, first, near_zero, two, middle, late], count=6)
    assert [m.name for m in chosen] == ["two", "late", "middle", "first", "near_zero", "first_zero"]
    assert [m.name for m in figures.highlighted_matrices([first_zero, first, late, two])] == ["two", "late", "first"]
    assert "most intruders" in figures.HIGHLIGHT_RULE and "lowest max |cos|" in figures.HIGHLIGHT_RULE
