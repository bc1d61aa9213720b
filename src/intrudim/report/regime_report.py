"""The regime experiment's report.html: the rule and its outcome, forgetting per method over seeds with each run's
regime, the repair λ-sweeps against both controls, and the questions decided per seed and over the seeds.

Self-contained (figures embedded as base64 PNG); links to each repair sweep's own report are relative, so the OUT
folder can be moved as one. Built from summary.json alone (:func:`write_regime_report`).
"""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path
from typing import Any

from intrudim.fileio import write_text_atomic
from intrudim.report import figures
from intrudim.report.demo_report import VERDICT_CSS, _numbers, seed_points_figure
from intrudim.report.templating import environment, version

METHOD_LABELS = {"none": "intruders × λ", "non-intruder": "non-intruders × λ (control)",
                 "shrink": "norm-matched shrink (control)"}  # fmt: skip
METHOD_COLORS = {"none": figures.LORA_COLOR, "non-intruder": "#7f7f7f", "shrink": figures.BASE_COLOR}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def forgetting_figure(summary: dict[str, Any]) -> bytes:
    """Δ loss per method, one marker per seed with its paired bootstrap interval over windows, a pale bar at the mean."""
    values: dict[str, dict[int, float]] = {}
    errors: dict[str, dict[int, tuple[float, float]]] = {}
    for run, method in summary["methods"].items():
        for seed, row in method["per_seed"].items():
            values.setdefault(run, {})[int(seed)] = row["delta"]
            errors.setdefault(run, {})[int(seed)] = tuple(row["ci95"])
    measure = summary["forgetting_measure"]
    title = f"Forgetting on {measure['text'].get('source', 'text')} ({measure['tokens']} tokens)"
    return figures._png(seed_points_figure(values, title, "Δ loss, tuned − base (nats/token)", errors=errors,
                                           zero_line=True))  # fmt: skip


def recovered_figure(summary: dict[str, Any]) -> bytes | None:
    """Per LoRA run, the fraction of its forgetting recovered against λ: one colour per method, one marker and line
    style per seed. None when no run was swept."""
    plt = figures.plt
    runs = [run for run, table in summary["recovered"].items()
            if any(v["seeds_measured"] for method in table.values() for v in method.values())]  # fmt: skip
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
    seeds = [str(s) for s in summary["seeds"]]
    for ax, run in zip(axes[0], runs, strict=True):
        for method, by_lambda in summary["recovered"][run].items():
            lambdas = sorted(by_lambda, key=float)
            for j, seed in enumerate(seeds):
                points = [(float(lam), by_lambda[lam]["per_seed"].get(seed)) for lam in lambdas]
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.plot([x for x, _ in points], [y for _, y in points], color=METHOD_COLORS[method],
                            label=METHOD_LABELS[method] if j == 0 else None, **figures.series_style(j))  # fmt: skip
        ax.axhline(0.0, color="#444", linewidth=0.8)
        ax.axhline(1.0, color="#444", linewidth=0.6, linestyle=":")
        ax.set_xlabel("λ (1 = the tuned run)")
        ax.set_ylabel("fraction of the forgetting recovered")
        ax.set_title(f"Repair of {run}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    seeds_text = ", ".join(seeds)
    fig.suptitle(f"(tuned − repaired loss) / (tuned − base loss); markers and line styles: seeds {seeds_text}",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    return figures._png(fig)


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _method_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run, method in summary["methods"].items():
        low, high = method["ci95_over_seeds"]
        seeds = [f"seed {seed}: {row['delta']:+.4g} [{row['ci95'][0]:+.3g}, {row['ci95'][1]:+.3g}], ×{_fmt(row['perplexity_ratio'], '.3g')}, "
                 f"accuracy {_fmt(row['accuracy'], '.3f')} at step {row['steps']}, {_fmt(row['intruders'], 'd')} intruders"
                 for seed, row in method["per_seed"].items()]  # fmt: skip
        destructive = method["destructive_seeds"]
        rows.append({"run": run, "mean": f"{method['mean_delta']:+.4g}", "interval": f"[{low:+.4g}, {high:+.4g}]",
                     "seeds": seeds, "regime": f"destructive in seeds {', '.join(map(str, destructive))}"
                     if destructive else "non-destructive in every seed"})  # fmt: skip
    return rows


def _recovered_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run, table in summary["recovered"].items():
        for method, by_lambda in table.items():
            cells = []
            for lam in sorted((lam for lam in by_lambda if lam != "1"), key=float):  # λ = 1 is TUNED: 0 by definition
                value = by_lambda[lam]
                if value["mean"] is None:
                    cells.append("—")
                else:
                    low, high = value["ci95_over_seeds"]
                    cells.append(f"{value['mean']:+.3f} [{low:+.3f}, {high:+.3f}] ({value['seeds_measured']})")
            rows.append({"run": run, "method": METHOD_LABELS[method], "cells": cells})
    return rows


def write_regime_report(summary: dict[str, Any], out: Path) -> Path:
    """Write OUT/report.html from the regime experiment's summary; its path."""
    claims = []
    for number, c in enumerate(summary["claims"], start=1):
        seed_rows = [{"seed": p["seed"], "label": "held" if p["held"] else "not measured" if p["held"] is None
                      else "not held", "numbers": _numbers(c["numbers"][f"seed {p['seed']}"]), "reason": p["reason"]}
                     for p in c["per_seed"]]  # fmt: skip
        claims.append({**c, "number": number, "label": c["result"], "css": VERDICT_CSS[c["verdict"]],
                       "seed_rows": seed_rows})  # fmt: skip
    lambdas = sorted({lam for table in summary["recovered"].values() for m in table.values() for lam in m if lam != "1"},
                     key=float)  # fmt: skip
    repair_links = [{"seed": seed, "run": run, "href": f"{summary['seed_folders'][str(seed)]}/repair/{run}/report.html"}
                    for seed in summary["seeds"] for run in summary["recovered"]
                    if (out / summary["seed_folders"][str(seed)] / "repair" / run / "report.html").is_file()]  # fmt: skip
    recovered = recovered_figure(summary)
    seeds = summary["seeds"]
    seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    verdict = (f"{summary['held']} of {len(claims)} questions held in every seed, {summary['fragile']} fragile (the "
               f"seeds disagree), {summary['not_held']} not held, {summary['not_measured']} not measured ({seeds_text}, "
               f"{summary['seconds']['total']:.0f} s).")  # fmt: skip
    measure = summary["forgetting_measure"]
    html = environment().get_template("regime.html").render(
        version=version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), verdict=verdict,
        rule=summary["rule"], outcome=[o["outcome"] for o in summary["rule_outcome"].values()],
        recipe=summary["recipe"], seeds_text=seeds_text, methods=_method_rows(summary),
        forgetting_png=_b64(forgetting_figure(summary)), recovered_png=_b64(recovered) if recovered else None,
        recovered_rows=_recovered_rows(summary), lambdas=lambdas, claims=claims, repair_links=repair_links,
        base=f"{measure['base_loss']:.4f} nats/token (perplexity {measure['base_perplexity']:.4g})",
        text=measure["text"].get("description", measure["text"].get("source", "")), tokens=measure["tokens"],
    )  # fmt: skip
    return write_text_atomic(out / "report.html", html)
