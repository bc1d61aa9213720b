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
from intrudim.report.templating import environment, version

VERDICT_CSS = {"held": "held", "fragile": "fragile", "not held": "not-held", "not measured": "unknown"}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _file_figure(path: Path, title: str, caption: str) -> dict[str, str] | None:
    if not path.is_file():
        return None
    return {"title": title, "caption": caption, "png": _b64(path.read_bytes()), "name": path.stem}


def seed_points_figure(values: dict[str, dict[int, float]], title: str, ylabel: str, *,
                       errors: dict[str, dict[int, tuple[float, float]]] | None = None, counts: bool = False,
                       zero_line: bool = False):  # fmt: skip
    """One group per name: a pale bar at the mean over seeds and one marker per seed (with its interval when
    ``errors`` has one), each seed its own marker, so that n seeds show as n points, never as one bar."""
    plt = figures.plt
    names = list(values)
    seeds = sorted({seed for per_seed in values.values() for seed in per_seed})
    fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(names) + 2.4), 3.5))
    width = 0.6
    labelled: set[int] = set()  # each seed named once in the legend, at its first marker
    for i, name in enumerate(names):
        points = values[name]
        if points:
            ax.bar(i, sum(points.values()) / len(points), width=width, color=figures.LORA_COLOR, alpha=0.18,
                   edgecolor=figures.LORA_COLOR)  # fmt: skip
        for j, seed in enumerate(seeds):
            if seed not in points:
                continue
            x = i + (j - (len(seeds) - 1) / 2) * min(0.16, width / max(1, len(seeds)))
            style = figures.series_style(j)
            yerr = None
            if errors and seed in errors.get(name, {}):
                low, high = errors[name][seed]
                yerr = [[max(0.0, points[seed] - low)], [max(0.0, high - points[seed])]]  # a percentile interval may miss its point
            ax.errorbar([x], [points[seed]], yerr=yerr, color="#222222", marker=style["marker"], markersize=6,
                        markerfacecolor="white", capsize=3, linestyle="none", clip_on=False,
                        label=None if seed in labelled else f"seed {seed}")  # fmt: skip
            labelled.add(seed)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    if zero_line:
        ax.axhline(0.0, color="#444", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if seeds:
        ax.legend(fontsize=7, loc="best")
    if counts:
        empty = not any(v for per_seed in values.values() for v in per_seed.values())
        figures.count_axis(ax, empty_message="no intruder dimensions in any run or seed" if empty else None)
    return fig


def _points(values: dict[str, dict[int, float]], title: str, ylabel: str, **options: Any) -> str:
    return _b64(figures._png(seed_points_figure(values, title, ylabel, **options)))


def _steps_figure(series: dict[int, list[dict[str, int]]], title: str) -> bytes:
    plt = figures.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for j, (seed, points) in enumerate(series.items()):
        ax.plot([p["step"] for p in points], [p["intruders"] for p in points], color=figures.LORA_COLOR,
                label=f"seed {seed}", **figures.series_style(j))  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("intruder dimensions (k=10, ε=0.5)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures.count_axis(ax)
    return figures._png(fig)


def _mean_sweeps(per_seed: list[dict[str, dict[Any, int]]]) -> dict[str, dict[Any, float]]:
    """run → point → the mean count over the seeds that have it."""
    merged: dict[str, dict[Any, list[int]]] = {}
    for sweeps in per_seed:
        for name, sweep in sweeps.items():
            for key, count in sweep.items():
                merged.setdefault(name, {}).setdefault(key, []).append(count)
    return {name: {key: sum(v) / len(v) for key, v in sweep.items()} for name, sweep in merged.items()}


def claim_figures(summary: dict[str, Any], out: Path) -> dict[str, list[dict[str, str]]]:
    """Figures per claim id, built from every seed's measurements (and the PNGs the first seed's steps wrote)."""
    seeds = [int(seed) for seed in summary["measurements"]]
    by_seed = {int(seed): m for seed, m in summary["measurements"].items()}
    first = seeds[0]
    seeds_text = f"seed {first}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    fig: dict[str, list[dict[str, Any]]] = {c["id"]: [] for c in summary["claims"]}

    def per_run(value) -> dict[str, dict[int, float]]:
        table: dict[str, dict[int, float]] = {}
        for seed, m in by_seed.items():
            for name, run in m["runs"].items():
                found = value(run)
                if found is not None:
                    table.setdefault(name, {})[seed] = found
        return table

    counts = per_run(lambda run: run["analysis"]["total_intruders"])
    fig["intruders-lora-vs-full"].append({
        "title": "Intruder dimensions per run (k=10, ε=0.5, summed over matrices)",
        "caption": f"One marker per seed ({seeds_text}), the pale bar at their mean; every run fine-tunes MiniLM on "
                   f"the same task (accuracies in the claims table).",
        "png": _points(counts, "Intruders per run", "intruder dimensions", counts=True),
        "name": "intruders_per_run"})  # fmt: skip
    fig["rank"].append(fig["intruders-lora-vs-full"][-1])  # the same figure answers both claims
    eps = _mean_sweeps([{name: {float(e): n for e, n in run["analysis"]["epsilon_sweep"].items()}
                         for name, run in m["runs"].items()} for m in by_seed.values()])  # fmt: skip
    mean_text = "" if len(seeds) == 1 else f" Mean over {seeds_text}; each seed's counts are in summary.json."
    fig["epsilon-and-k"].append({"title": "Intruders vs ε (Fig. 5)", "caption": "Intruder counts at each threshold ε "
                                 f"on max |cos| (k=10).{mean_text}", "png": _b64(figures.epsilon_sweep_plot(eps, 10)),
                                 "name": "epsilon_sweep"})  # fmt: skip
    ks = _mean_sweeps([{name: run["analysis"]["k_sweep"] for name, run in m["runs"].items()
                        if run["analysis"].get("k_sweep")} for m in by_seed.values()])  # fmt: skip
    if ks:
        fig["epsilon-and-k"].append({"title": "Intruders vs k (Fig. 11)", "caption": "k as a share of each matrix's "
                                     f"singular vectors (ε=0.5).{mean_text}", "png": _b64(figures.k_sweep_plot(ks, 0.5)),
                                     "name": "k_sweep"})  # fmt: skip
    ranks = per_run(lambda run: run["analysis"].get("effective_rank_mean"))
    if ranks:
        fig["effective-rank"].append({"title": "Mean effective rank of ΔW (Fig. 6)", "caption": "Roy & Vetterli's "
                                      "effective rank, averaged over the matrices of each run; one marker per seed.",
                                      "png": _points(ranks, "Effective rank of ΔW", "effective rank"),
                                      "name": "effective_rank"})  # fmt: skip
    tracked = {seed: m["runs"]["lora-r1"]["tracked"] for seed, m in by_seed.items()
               if m["runs"].get("lora-r1", {}).get("tracked")}  # fmt: skip
    if tracked:
        fig["training-dynamics"].append({"title": "Intruders of LoRA r=1 over training (Fig. 7)", "caption": "Step 0 "
                                         "is the base model; then every tracked checkpoint and the final weights; "
                                         "one line per seed.", "name": "intruders_over_steps",
                                         "png": _b64(_steps_figure(tracked, "LoRA r=1: intruders over steps"))})  # fmt: skip
    b_only = {name: counts[name] for name in ("lora-r1", "b-only-r1") if name in counts}
    fig["b-only"].append({"title": "LoRA vs B-only LoRA, r=1 (Fig. 10)", "caption": "B-only: A frozen with all "
                          "singular values 1, only B trained; one marker per seed.", "name": "b_only",
                          "png": _points(b_only, "LoRA vs B-only", "intruder dimensions", counts=True)})  # fmt: skip
    forgetting = {seed: m["forgetting"] for seed, m in by_seed.items()}
    deltas: dict[str, dict[int, float]] = {}
    intervals: dict[str, dict[int, tuple[float, float]]] = {}
    for seed, f in forgetting.items():
        for name, row in f["rows"].items():
            deltas.setdefault(name, {})[seed] = row["delta"]
            intervals.setdefault(name, {})[seed] = tuple(row["ci95"])
    measured = forgetting[first]
    fig["forgetting"].append({
        "title": f"Forgetting: loss increase on {measured['text'].get('source', 'text')} (Fig. 9)",
        "caption": f"Tuned − base of the {measured['measure']} loss per seed, with its paired bootstrap 95% interval.",
        "png": _points(deltas, "Forgetting", "Δ loss (nats)", errors=intervals, zero_line=True),
        "name": "forgetting"})  # fmt: skip
    repair_points: dict[str, dict[int, float]] = {}
    for c in summary["claims"]:
        if c["id"] != "repair":
            continue
        for key, numbers in c["numbers"].items():
            seed = int(key.split()[-1])
            for label, field in (("tuned (λ=1)", "tuned"), ("intruders × λ", "intruders_scaled"),
                                 ("non-intruders × λ", "non_intruder_control"), ("norm-matched shrink", "shrink_control")):  # fmt: skip
                point = numbers.get(field)
                if isinstance(point, dict) and point.get("forgetting_loss") is not None:
                    repair_points.setdefault(label, {})[seed] = point["forgetting_loss"]
    if repair_points:
        lam = summary["demo"]["recipe"]["repair_lambda"]
        fig["repair"].append({"title": f"Repair at λ={lam:g}: loss on the text, per seed (v2)", "caption": "The loss "
                              "of the tuned run, of its intruders scaled by λ, and of the two controls (non-intruder "
                              "directions scaled by λ; the whole update shrunk to the same norm); lower is less "
                              "forgetting.", "name": "repair_points",
                              "png": _points(repair_points, "Repair against both controls", "loss (nats/token)")})  # fmt: skip
    seed_dir = out / summary["seed_folders"][str(first)]
    first_text = "" if len(seeds) == 1 else f" Seed {first}; every seed's own figure is in seed-S/."
    found = _file_figure(seed_dir / "repair" / "repair_sweep.png", "Repair: loss and accuracy against λ (v2)",
                         "Intruders scaled by λ, against the non-intruder and shrink controls." + first_text)  # fmt: skip
    if found:
        fig["repair"].append(found)
    for name, path in by_seed[first].get("continual", {}).get("paths", {}).items():
        if not str(path).endswith(".png"):
            continue
        path = Path(path) if Path(path).is_file() else seed_dir / "continual" / Path(path).name  # --out was moved
        if "accuracy" in name:
            title = "Accuracy of every task after each stage (Fig. 8)"
            caption = ("Grey: before the task is trained; dotted: the task's accuracy right after its own stage; "
                       "vertical lines: stage boundaries.")
        else:
            title = "Intruders against the ORIGINAL base after each stage (v2)"
            caption = "LoRA adapters are merged between stages; counts at k=10, ε=0.5 summed over matrices."
        found = _file_figure(path, title, caption + first_text)
        if found:
            fig["continual"].append(found)
    for name, title in (("toy_sweep", "Toy model W + λvvᵀ (Sec. 5)"), ("random_baseline", "Random baseline (App. C)")):
        found = _file_figure(seed_dir / "toy" / "figures" / f"{name}.png", title, first_text.strip())
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


def map_sections(summary: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """One section per learning-rate × rank map the demo drew (the full demo; issue 27, part 2): its figure, where
    intruders begin per rank, and the α·η its rule picks, against the demo's own recipe."""
    sections = []
    for model, data in (summary.get("maps") or {}).items():
        begins = [f"r = {rank} at α·η = {lr:g}" if lr is not None else f"r = {rank} at none"
                  for rank, lr in data["first_intruder_lr"].items()]  # fmt: skip
        full = [c for c in data["cells"] if c["rank"] == "full"]
        full_text = ""
        if full:
            with_intruders = [f"{c['lr']:g}" for c in full if (c["intruders"] or 0) > 0]
            full_text = (f"; full fine-tuning at η = {', '.join(with_intruders)}" if with_intruders
                         else "; full fine-tuning at none of its η")  # fmt: skip
        chosen = data.get("chosen_lr")
        sections.append({
            "model": model, "seed": data.get("seed"), "runs": len(data["cells"]),
            "begins": ", ".join(begins) + full_text,
            "chosen": "none" if chosen is None else f"{chosen:g}", "rule": data.get("rule", ""),
            "figure": _file_figure(out / data["figure"], f"Learning-rate × rank map on {model}",
                                   "Per run: intruder dimensions, held-out accuracy and forgetting; full fine-tuning "
                                   "at its own η."),  # fmt: skip
            "href": f"{data['folder']}/map.json",
        })  # fmt: skip
    return sections


def _where(summary: dict[str, Any]) -> str:
    """", trained on the CPU" / ", trained on a GPU" (a summary of an earlier version does not say: nothing)."""
    return {"cpu": ", trained on the CPU", "cuda": ", trained on a GPU"}.get(summary.get("device"), "")


def write_demo_report(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write OUT/report.html from the demo's summary."""
    claims = summary["claims"]
    per_claim = claim_figures(summary, out)
    rows = []
    for number, c in enumerate(claims, start=1):
        per_seed = [{"seed": p["seed"], "label": "held" if p["held"] else "not measured" if p["held"] is None
                     else "not held", "numbers": _numbers(c["numbers"][f"seed {p['seed']}"]), "reason": p["reason"]}
                    for p in c["per_seed"]]  # fmt: skip
        rows.append({**c, "number": number, "label": c["result"], "css": VERDICT_CSS[c["verdict"]],
                     "seed_rows": per_seed, "figures": per_claim.get(c["id"], [])})  # fmt: skip
    seeds = summary["seeds"]
    folders = {seed: summary["seed_folders"][str(seed)] for seed in seeds}
    analyses = [{"name": name if len(seeds) == 1 else f"{name} (seed {seed})",
                 "href": f"{folders[seed]}/analysis/{name}/report.html"}
                for seed in seeds for name in summary["measurements"][str(seed)]["runs"]
                if (out / folders[seed] / "analysis" / name / "report.html").is_file()]  # fmt: skip
    links = {kind: [{"seed": seed, "href": f"{folders[seed]}/{path}"} for seed in seeds
                    if (out / folders[seed] / path).is_file()]
             for kind, path in (("toy", "toy/toy.html"), ("repair", "repair/report.html"))}  # fmt: skip
    mode = "quick" if summary["demo"]["quick"] else "full"
    seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    verdict = (f"{summary['held']} of {len(claims)} claims held in every seed, {summary['fragile']} fragile (the "
               f"seeds disagree), {summary['not_held']} not held, {summary['not_measured']} not measured ({mode} "
               f"demo, {seeds_text}{_where(summary)}, {summary['seconds']['total']:.0f} s).")  # fmt: skip
    html = environment().get_template("demo.html").render(
        version=version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), verdict=verdict,
        claims=rows, analyses=analyses, mode=mode, recipe=json.dumps(summary["demo"]["recipe"], indent=1),
        toy_reports=links["toy"], repair_reports=links["repair"], several_seeds=len(seeds) > 1, seeds_text=seeds_text,
        maps=map_sections(summary, out), total_lr=summary["demo"]["recipe"]["total_lr"],
    )  # fmt: skip
    return {"html": write_text_atomic(out / "report.html", html)}
