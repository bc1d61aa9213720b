"""Writing an analysis to disk: analysis.json, analysis.csv, figures/*.png and a self-contained report.html.

Every file is written atomically; figures are embedded in the HTML as base64 so the report can be mailed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from intrudim.fileio import ensure_writable_directory, write_bytes_atomic, write_text_atomic
from intrudim.report import figures
from intrudim.spectral.intruders import random_vector_max_cosine
from intrudim.spectral.toy import toy_findings


def _environment() -> Environment:
    return Environment(loader=PackageLoader("intrudim", "report/templates"), autoescape=select_autoescape(["html"]))


def _verdict(data: dict[str, Any]) -> tuple[str, bool]:
    total, n = data["total_intruders"], data["matrices_analysed"]
    hit = data["matrices_with_intruders"]
    k, eps = data["k"], data["epsilon"]
    if total == 0:
        return (
            f"No intruder dimensions: every top-{k} singular vector of the tuned model stays close (|cos| ≥ {eps}) to "
            f"a pre-trained singular vector, as full fine-tuning typically does.",
            False,
        )
    return (
        f"{total} intruder dimensions in {hit} of {n} matrices (k={k}, ε={eps}): the update added new high-ranking "
        f"directions that the pre-trained weights did not have, the signature the paper links to LoRA and to more "
        f"forgetting. The paper's remedy is to scale their singular values down (λ = 0.75), which recovers much of "
        f"the forgetting at little task cost.",
        True,
    )


def build_figures(result) -> list[dict[str, str]]:
    """Figures for an :class:`~intrudim.analyze.AnalysisResult`, as PNG bytes with titles and captions."""
    data = result.to_json()
    cfg = result.config
    highlighted = figures.highlighted_matrices(result.matrices)
    out: list[dict[str, Any]] = []
    for m in highlighted:
        if m.similarity is not None:
            out.append({
                "name": f"similarity_{m.name.replace('.', '_')}",
                "title": f"Similarity matrix: {m.name}",
                "caption": "Rows: the tuned matrix's top singular vectors; columns: the base's top singular vectors. "
                "A bright diagonal means the tuned vectors are the base's own; a dark row is a new direction (an "
                "intruder). Compare Fig. 1 and Fig. 3 of the paper.",
                "png": figures.similarity_heatmap(m, cfg.epsilon),
            })  # fmt: skip
    out.append({
        "name": "epsilon_sweep", "title": "Intruders vs ε (Fig. 5)",
        "caption": "Total intruder dimensions among each matrix's top-k vectors for thresholds ε from 0.1 to 0.9. "
        "Full fine-tuning stays near zero for ε up to about 0.6–0.9; LoRA does not.",
        "png": figures.epsilon_sweep_plot({Path(result.tuned).name or result.tuned: result.epsilon_sweep()}, cfg.k),
    })  # fmt: skip
    if data["k_sweep"]:
        out.append({
            "name": "k_sweep", "title": "Intruders vs k (Fig. 11)",
            "caption": "Intruders counted among the top-k tuned vectors as k grows to every singular vector.",
            "png": figures.k_sweep_plot({Path(result.tuned).name or result.tuned: data["k_sweep"]}, cfg.epsilon),
        })  # fmt: skip
    out.append({
        "name": "max_cos", "title": "Max |cos| of each top tuned vector to the base",
        "caption": "Each dot is one of the top-k tuned vectors of one matrix (red: matrices with intruders). Below the "
        "dashed line are intruders; the dotted line is what a random direction would score (App. C).",
        "png": figures.max_cos_scatter(result.matrices, cfg.epsilon),
    })  # fmt: skip
    out.append({
        "name": "by_layer", "title": "Intruders per layer",
        "caption": "Where in the network the intruders are.",
        "png": figures.counts_bar(result.by_layer(), "Intruders per layer", "layer"),
    })  # fmt: skip
    out.append({
        "name": "by_module_type", "title": "Intruders per matrix type",
        "caption": "Which kinds of matrices (attention q/k/v/o, MLP) carry them.",
        "png": figures.counts_bar(result.by_module_type(), "Intruders per matrix type", "matrix type"),
    })  # fmt: skip
    if any(m.effective_rank_delta is not None for m in result.matrices):
        out.append({
            "name": "effective_rank", "title": "Effective rank of ΔW (Fig. 6)",
            "caption": "exp(entropy of the normalised singular values of W_t − W₀) (Roy & Vetterli 2007). LoRA updates "
            "have a much lower effective rank than full fine-tuning, even at high rank.",
            "png": figures.effective_rank_plot(result.matrices),
        })  # fmt: skip
    out.append({
        "name": "singular_values", "title": "Top singular values, tuned vs base",
        "caption": "The base's spectrum (blue) and the tuned one (grey) for the highlighted matrices; circled points "
        "are intruders. An intruder usually appears with a singular value that is large relative to the base's.",
        "png": figures.singular_values_plot(highlighted),
    })  # fmt: skip
    return out


def write_analysis_outputs(result, out_dir: str | Path, *, command: str = "") -> dict[str, Path]:
    """Write analysis.json, analysis.csv, figures/*.png and report.html into ``out_dir``; return their paths."""
    out_dir = ensure_writable_directory(out_dir)
    data = result.to_json()
    paths: dict[str, Path] = {}
    full = result.to_json()
    highlighted = {m.name for m in figures.highlighted_matrices(result.matrices)}
    for entry, m in zip(full["matrices"], result.matrices, strict=True):
        if m.name in highlighted and m.similarity is not None:
            entry["similarity"] = m.similarity
    paths["json"] = write_text_atomic(out_dir / "analysis.json", json.dumps(full, indent=2) + "\n")
    paths["csv"] = write_text_atomic(out_dir / "analysis.csv", result.to_csv())
    figs = build_figures(result)
    for fig in figs:
        paths[fig["name"]] = write_bytes_atomic(out_dir / "figures" / f"{fig['name']}.png", fig["png"])
        fig["png"] = base64.b64encode(fig["png"]).decode("ascii")
    verdict, bad = _verdict(data)
    n_out = result.matrices[0].shape[0] if result.matrices else 1
    html = _environment().get_template("analysis.html").render(
        title=f"Intruder dimensions: {Path(str(result.tuned)).name or result.tuned}",
        version=_version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), data=data, figures=figs,
        verdict=verdict, verdict_bad=bad, n_out=n_out, random_baseline=random_vector_max_cosine(n_out),
        command=command or f"intrudim analyze {result.base} {result.tuned} --k {result.k} --epsilon {result.epsilon}",
    )  # fmt: skip
    paths["html"] = write_text_atomic(out_dir / "report.html", html)
    return paths


def toy_payload(sweep, baseline) -> dict[str, Any]:
    """The toy JSON document (toy.json, `intrudim toy --json`): the sweep with its thresholds, findings, App. C."""
    from dataclasses import asdict

    section5 = asdict(sweep)
    section5["findings"] = toy_findings(sweep)
    return {"section5": section5, "appendix_c": [asdict(p) for p in baseline]}


def write_toy_outputs(sweep, baseline, out_dir: str | Path) -> dict[str, Path]:
    """Write toy.json, figures and toy.html for the Sec. 5 sweep and the App. C baseline."""
    out_dir = ensure_writable_directory(out_dir)
    paths: dict[str, Path] = {}
    payload = toy_payload(sweep, baseline)
    paths["json"] = write_text_atomic(out_dir / "toy.json", json.dumps(payload, indent=2) + "\n")
    sweep_png = figures.toy_sweep_plot(sweep)
    baseline_png = figures.random_baseline_plot(baseline)
    paths["toy_sweep"] = write_bytes_atomic(out_dir / "figures" / "toy_sweep.png", sweep_png)
    paths["random_baseline"] = write_bytes_atomic(out_dir / "figures" / "random_baseline.png", baseline_png)
    findings = toy_findings(sweep)
    html = _environment().get_template("toy.html").render(
        version=_version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), sweep=sweep,
        baseline=baseline, sweep_png=base64.b64encode(sweep_png).decode("ascii"),
        baseline_png=base64.b64encode(baseline_png).decode("ascii"), findings=findings,
    )  # fmt: skip
    paths["html"] = write_text_atomic(out_dir / "toy.html", html)
    return paths


def _version() -> str:
    from intrudim import __version__

    return __version__
