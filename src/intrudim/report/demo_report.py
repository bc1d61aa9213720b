"""The demo's report.html: the verdict, the claims table and one section per claim with its figures.

Self-contained: every figure is embedded as base64 PNG (figures the demo's steps wrote to disk, such as the toy
sweep, the repair sweep and the continual plots, are read back and embedded). Links to the per-run analysis
reports are relative, so the whole --out folder can be moved or mailed as one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from intrudim.fileio import write_text_atomic
from intrudim.report import figures
from intrudim.report.analysis_report import _environment, _version

HELD_LABELS = {True: "held", False: "not held", None: "not measured"}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _file_figure(path: Path, title: str, caption: str) -> dict[str, str] | None:
    if not path.is_file():
        return None
    return {"title": title, "caption": caption, "png": _b64(path.read_bytes()), "name": path.stem}


def _bar_with_errors(values: dict[str, float], errors: dict[str, tuple[float, float]] | None, title: str,
                     ylabel: str) -> bytes:  # fmt: skip
    plt = figures.plt
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(values) + 2), 3.4))
    names = list(values)
    heights = [values[n] for n in names]
    yerr = None
    if errors:
        yerr = [[values[n] - errors[n][0] for n in names], [errors[n][1] - values[n] for n in names]]
    ax.bar(range(len(names)), heights, color=figures.LORA_COLOR, yerr=yerr, capsize=4)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.axhline(0.0, color="#444", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return figures._png(fig)


def _line(points: list[dict[str, int]], title: str) -> bytes:
    plt = figures.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([p["step"] for p in points], [p["intruders"] for p in points], marker="o", color=figures.LORA_COLOR)
    ax.set_xlabel("training step")
    ax.set_ylabel("intruder dimensions (k=10, ε=0.5)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return figures._png(fig)


def claim_figures(summary: dict[str, Any], out: Path) -> dict[str, list[dict[str, str]]]:
    """Figures per claim id, built from the summary's measurements (and the PNGs the demo's steps wrote)."""
    m = summary["measurements"]
    runs = m["runs"]
    fig: dict[str, list[dict[str, Any]]] = {c["id"]: [] for c in summary["claims"]}
    counts = {name: run["analysis"]["total_intruders"] for name, run in runs.items()}
    fig["intruders-lora-vs-full"].append({
        "title": "Intruder dimensions per run (k=10, ε=0.5, summed over matrices)",
        "caption": "Each run fine-tunes MiniLM on the same task; see the accuracies in the claims table.",
        "png": _b64(figures.counts_bar(counts, "Intruders per run", "run")), "name": "intruders_per_run"})  # fmt: skip
    fig["rank"].append(fig["intruders-lora-vs-full"][-1])  # the same bar answers both claims
    eps = {name: {float(e): n for e, n in run["analysis"]["epsilon_sweep"].items()} for name, run in runs.items()}
    fig["epsilon-and-k"].append({"title": "Intruders vs ε (Fig. 5)", "caption": "Fewer vectors count as new as the "
                                 "threshold on |cos| falls.", "png": _b64(figures.epsilon_sweep_plot(eps, 10)),
                                 "name": "epsilon_sweep"})  # fmt: skip
    ks = {name: run["analysis"]["k_sweep"] for name, run in runs.items() if run["analysis"].get("k_sweep")}
    if ks:
        fig["epsilon-and-k"].append({"title": "Intruders vs k (Fig. 11)", "caption": "k as a share of each matrix's "
                                     "singular vectors.", "png": _b64(figures.k_sweep_plot(ks, 0.5)), "name": "k_sweep"})  # fmt: skip
    ranks = {name: run["analysis"]["effective_rank_mean"] for name, run in runs.items()
             if run["analysis"].get("effective_rank_mean") is not None}  # fmt: skip
    if ranks:
        fig["effective-rank"].append({"title": "Mean effective rank of ΔW (Fig. 6)", "caption": "Roy & Vetterli's "
                                      "effective rank, averaged over the matrices of each run.",
                                      "png": _b64(_bar_with_errors(ranks, None, "Effective rank of ΔW", "effective rank")),
                                      "name": "effective_rank"})  # fmt: skip
    tracked = runs.get("lora-r1", {}).get("tracked")
    if tracked:
        fig["training-dynamics"].append({"title": "Intruders of LoRA r=1 over training (Fig. 7)", "caption": "Step 0 "
                                         "is the base model; then every tracked checkpoint and the final weights.",
                                         "png": _b64(_line(tracked, "LoRA r=1: intruders over steps")),
                                         "name": "intruders_over_steps"})  # fmt: skip
    b_only = {name: counts[name] for name in ("lora-r1", "b-only-r1") if name in counts}
    fig["b-only"].append({"title": "LoRA vs B-only LoRA, r=1 (Fig. 10)", "caption": "B-only: A frozen with all "
                          "singular values 1, only B trained.", "name": "b_only",
                          "png": _b64(figures.counts_bar(b_only, "LoRA vs B-only", "run"))})  # fmt: skip
    rows = m["forgetting"]["rows"]
    fig["forgetting"].append({
        "title": f"Forgetting: loss increase on {m['forgetting']['text'].get('source', 'text')} (Fig. 9)",
        "caption": f"Tuned − base of the {m['forgetting']['measure']} loss, with the paired bootstrap 95% interval.",
        "png": _b64(_bar_with_errors({n: r["delta"] for n, r in rows.items()},
                                     {n: tuple(r["ci95"]) for n, r in rows.items()}, "Forgetting", "Δ loss (nats)")),
        "name": "forgetting"})  # fmt: skip
    for path, title in ((out / "repair" / "repair_sweep.png", "Repair: loss and accuracy against λ (v2)"),):
        found = _file_figure(path, title, "Intruders scaled by λ, against the non-intruder and shrink controls.")
        if found:
            fig["repair"].append(found)
    for name, path in m.get("continual", {}).get("paths", {}).items():
        if not str(path).endswith(".png"):
            continue
        path = Path(path) if Path(path).is_file() else out / "continual" / Path(path).name  # --out was moved
        if "accuracy" in name:
            title = "Accuracy of every task after each stage (Fig. 8)"
            caption = ("Grey: before the task is trained; dotted: the task's accuracy right after its own stage; "
                       "vertical lines: stage boundaries.")
        else:
            title = "Intruders against the ORIGINAL base after each stage (v2)"
            caption = "LoRA adapters are merged between stages; counts at k=10, ε=0.5 summed over matrices."
        found = _file_figure(path, title, caption)
        if found:
            fig["continual"].append(found)
    for name, title in (("toy_sweep", "Toy model W + λvvᵀ (Sec. 5)"), ("random_baseline", "Random baseline (App. C)")):
        found = _file_figure(out / "toy" / "figures" / f"{name}.png", title, "")
        if found:
            fig["toy"].append(found)
    return fig


def _numbers(numbers: dict[str, Any]) -> str:
    """A compact one-line rendering of a claim's numbers."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return str(value)

    return "; ".join(f"{key}: {fmt(value)}" for key, value in numbers.items())


def write_demo_report(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write OUT/report.html from the demo's summary."""
    claims = summary["claims"]
    per_claim = claim_figures(summary, out)
    rows = []
    for number, c in enumerate(claims, start=1):
        rows.append({**c, "number": number, "label": HELD_LABELS[c["held"]],
                     "css": {True: "held", False: "not-held", None: "unknown"}[c["held"]],
                     "numbers_text": _numbers(c["numbers"]), "figures": per_claim.get(c["id"], [])})  # fmt: skip
    analyses = [{"name": name, "href": f"analysis/{name}/report.html"} for name in summary["measurements"]["runs"]
                if (out / "analysis" / name / "report.html").is_file()]  # fmt: skip
    mode = "quick" if summary["demo"]["quick"] else "full"
    verdict = (f"{summary['held']} of {len(claims)} claims held, {summary['not_held']} not held, "
               f"{summary['not_measured']} not measured ({mode} demo, seed {summary['demo']['seed']}, "
               f"{summary['seconds']['total']:.0f} s).")  # fmt: skip
    html = _environment().get_template("demo.html").render(
        version=_version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), verdict=verdict,
        claims=rows, analyses=analyses, mode=mode, recipe=json.dumps(summary["demo"]["recipe"], indent=1),
        toy_report="toy/toy.html" if (out / "toy" / "toy.html").is_file() else None,
        repair_report="repair/report.html" if (out / "repair" / "report.html").is_file() else None,
    )  # fmt: skip
    return {"html": write_text_atomic(out / "report.html", html)}
