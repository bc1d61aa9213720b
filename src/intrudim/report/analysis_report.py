"""Writing an analysis to disk: analysis.json, analysis.csv, figures/*.png and a self-contained report.html.

Every file is written atomically; figures are embedded in the HTML as base64 so the report can be mailed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from intrudim.fileio import ensure_writable_directory, write_bytes_atomic, write_text_atomic
from intrudim.report import figures
from intrudim.report.templating import environment, version
from intrudim.spectral.intruders import random_vector_max_cosine
from intrudim.spectral.toy import toy_findings


def _verdict(data: dict[str, Any]) -> tuple[str, bool]:
    total, n = data["total_intruders"], data["matrices_analysed"]
    hit = data["matrices_with_intruders"]
    k, eps = data["k"], data["epsilon"]
    if total == 0:
        return (
            f"No intruder dimensions: every top-{k} singular vector of the tuned model stays close (|cos| ≥ {eps}) to "
            f"a pre-trained singular vector, in all {n} matrices analysed. The paper finds this for full "
            f"fine-tuning and, more often than for low ranks, for LoRA of higher rank.",
            False,
        )
    return (
        f"{total} intruder dimensions in {hit} of {n} matrices (k={k}, ε={eps}): the update added new high-ranking "
        f"directions that the pre-trained weights did not have, the signature the paper links to LoRA and to more "
        f"forgetting. The paper (v2) scales their singular values down (λ = 0.75) and reports that this recovers "
        f"part of the forgetting; `intrudim repair --sweep` measures what it does for this model.",
        True,
    )


def _intruders(n: int) -> str:
    return f"{n} intruder{'' if n == 1 else 's'}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _subject(result) -> str:
    return "This adapter" if result.tuned_kind == "lora" else "This tuned model"


def _counts_sentence(counts: dict[str, int], label: str = "", shown: int = 6) -> str:
    """``{'0': 5, '1': 0}`` → "5 in layer 0; none in layer 1" (the largest first; at most ``shown`` named).
    ``label`` names what the keys are ("layer"), or "" when the keys say it themselves (matrix types)."""
    prefix = f"{label} " if label else ""
    plural = f"{label}s " if label else ""
    hit = sorted(((n, name) for name, n in counts.items() if n), key=lambda item: -item[0])
    parts = [f"{n} in {prefix}{name}" for n, name in hit[:shown]]
    if len(hit) > shown:
        parts.append(f"{sum(n for n, _ in hit[shown:])} in {len(hit) - shown} other {label or 'type'}s")
    empty = [name for name, n in counts.items() if not n]
    if len(empty) > shown:
        parts.append(f"none in the other {len(empty)} {label or 'type'}s")
    elif empty:
        parts.append(f"none in {plural if len(empty) > 1 else prefix}{_and(empty)}")
    return "; ".join(parts)


def _heatmap_caption(m, result, chosen: int) -> str:
    k, eps = result.k, result.epsilon
    columns = len(m.similarity[0]) if m.similarity else 0
    text = (
        f"Rows: this matrix's top-{len(m.similarity)} tuned singular vectors; columns: the base's top {columns}; "
        f"colour: |cos| (a bright diagonal: the base's own directions; a dark row: a new direction). "
    )
    if m.intruders:
        cosines = ", ".join(f"{m.max_abs_cos[r - 1]:.3f}" for r in m.intruder_ranks)
        ranks = ", ".join(map(str, m.intruder_ranks))
        text += (
            f"Here: {_intruders(m.intruders)} at rank{'s' if m.intruders > 1 else ''} {ranks}, with max |cos| to "
            f"any base vector {cosines} (below ε={eps}). "
        )
    else:
        lowest = min(m.max_abs_cos)
        text += (
            f"Here: no intruders (k={k}, ε={eps}); the lowest max |cos| to any base vector is {lowest:.3f} "
            f"(rank {m.max_abs_cos.index(lowest) + 1}). "
        )
    text += (
        f"Shown: {chosen} of {len(result.matrices)} matrices, chosen by a fixed rule: {figures.HIGHLIGHT_RULE}. "
        f"In the paper, LoRA's similarity matrices show such dark rows (a shifted diagonal) and full fine-tuning's "
        f"do not (Figs. 1 and 3)."
    )
    return text


def _epsilon_caption(result, sweep: dict[float, int]) -> str:
    subject, n = _subject(result), len(result.matrices)
    lo, hi = min(sweep, default=0.1), max(sweep, default=0.9)
    if not any(sweep.values()):
        text = (
            f"{subject}: no intruder dimensions at any ε from {lo:g} to {hi:g} (k={result.k}, {n} matrices); the "
            f"line lies at zero. "
        )
    else:
        counts = ", ".join(f"{c} at ε={e:g}" for e, c in sorted(sweep.items()))
        text = f"{subject} (k={result.k}, summed over {n} matrices): {counts}; this report's threshold is ε={result.epsilon}. "
    return text + (
        "In the paper (Fig. 5), fully fine-tuned models almost never have intruders among their top 10 vectors for "
        "ε up to about 0.6–0.9, while LoRA models of rank r ≤ 16 have many."
    )


def _k_caption(result, sweep: dict[str, int]) -> str:
    subject = _subject(result)
    if not any(sweep.values()):
        text = f"{subject}: no intruder dimensions at any k, up to every singular vector (ε={result.epsilon}). "
    else:
        counts = ", ".join(f"{c} at {label if label.startswith('k=') else 'k = ' + label}" for label, c in sweep.items())
        text = f"{subject} (ε={result.epsilon}, summed; k as a share of each matrix's singular vectors): {counts}. "
    return text + (
        "In the paper (Fig. 11), LoRA models tend to have more intruders than full fine-tuning whatever the k."
    )


def _max_cos_caption(result) -> str:
    matrices, eps = result.matrices, result.epsilon
    vectors = sum(len(m.max_abs_cos) for m in matrices)
    text = (
        "Each dot is one of the top-k tuned vectors of one matrix (red: matrices with intruders); below the dashed "
        "line are intruders. "
    )
    if matrices:
        lowest_matrix = min(matrices, key=lambda m: min(m.max_abs_cos, default=1.0))
        lowest = min(lowest_matrix.max_abs_cos)
        n = matrices[0].shape[0]
        text += (
            f"{_subject(result)}: {result.total_intruders} of {vectors} vectors are below ε={eps}; the lowest max "
            f"|cos| is {lowest:.3f} (rank {lowest_matrix.max_abs_cos.index(lowest) + 1} of {lowest_matrix.name}). "
            f"The dotted line, {random_vector_max_cosine(n):.3f}, is what a random direction in ℝ^{n} would score "
            f"(App. C)."
        )
    return text


def _effective_rank_caption(result) -> str:
    ranks = [m.effective_rank_delta for m in result.matrices if m.effective_rank_delta is not None]
    text = "exp(entropy of the normalised singular values of ΔW = W_t − W₀) (Roy & Vetterli 2007). "
    if not any(ranks):
        text += (
            f"Here ΔW is zero in all {len(ranks)} matrices (the tuned weights equal the base's), so its effective "
            f"rank is 0 everywhere. "
        )
    else:
        text += (
            f"{_subject(result)}: from {min(ranks):.2f} to {max(ranks):.2f} (mean {sum(ranks) / len(ranks):.2f}) "
            f"over {len(ranks)} matrices"
        )
        lora_ranks = sorted({m.lora_rank for m in result.matrices if m.lora_rank})
        if lora_ranks:
            text += f", adapter rank r = {_and([str(r) for r in lora_ranks])}"
        text += ". "
    merged = [s for s in figures.effective_rank_series(result.matrices) if len(s.names) > 1]
    for series in merged:
        text += f"{_and(list(series.names))} have the same effective rank in every layer: drawn as one line. "
    return text + (
        "In the paper (Fig. 6), LoRA updates have a much lower effective rank than full fine-tuning's, even at high "
        "adapter rank."
    )


def _singular_values_caption(highlighted) -> str:
    text = (
        "The base's top-k singular values (blue) and the tuned ones (grey) for the matrices shown above; circled "
        "points are intruders. "
    )
    same = [m.name for m in highlighted if all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(m.singular_values, m.base_singular_values, strict=False)
    )]  # fmt: skip
    if same:
        text += f"In {_and(same)} the tuned values equal the base's: the grey squares lie on the blue dots. "
    with_intruders = [m for m in highlighted if m.intruders]
    if not with_intruders:
        return text + "None of these matrices has intruders."
    parts = []
    for m in with_intruders:
        ratio = "" if m.largest_intruder_sigma_ratio is None else f", the highest-ranked with σ = {m.largest_intruder_sigma_ratio:.2f}·σ₁(W₀)"
        ranks = ", ".join(map(str, m.intruder_ranks))
        parts.append(f"{m.name}: {_intruders(m.intruders)} at rank{'s' if m.intruders > 1 else ''} {ranks}{ratio}")
    return text + "Here: " + "; ".join(parts) + "."


def _empty_counts(result, per: str) -> str:
    return (
        f"No intruder dimensions in any of the {len(result.matrices)} matrices (k={result.k}, ε={result.epsilon}): "
        f"nothing to plot per {per}."
    )


def build_figures(result) -> list[dict[str, Any]]:
    """Figures for an :class:`~intrudim.analyze.AnalysisResult`, as PNG bytes with titles and captions.

    Captions state what the figure shows for this result, computed from it; the paper's findings follow, marked
    as the paper's. A figure with nothing to show has ``png`` None and says so in ``empty`` instead."""
    cfg = result.config
    label = Path(result.tuned).name or result.tuned
    highlighted = figures.highlighted_matrices(result.matrices)
    out: list[dict[str, Any]] = []
    shown = [m for m in highlighted if m.similarity is not None]
    for m in shown:
        out.append({
            "name": f"similarity_{m.name.replace('.', '_')}",
            "title": f"Similarity matrix: {m.name}",
            "caption": _heatmap_caption(m, result, len(shown)),
            "png": figures.similarity_heatmap(m, cfg.epsilon),
        })  # fmt: skip
    sweep = result.epsilon_sweep()
    out.append({
        "name": "epsilon_sweep", "title": "Intruders vs ε (Fig. 5)", "caption": _epsilon_caption(result, sweep),
        "png": figures.epsilon_sweep_plot({label: sweep}, cfg.k),
    })  # fmt: skip
    k_sweep = result.k_sweep()
    if k_sweep:
        out.append({
            "name": "k_sweep", "title": "Intruders vs k (Fig. 11)", "caption": _k_caption(result, k_sweep),
            "png": figures.k_sweep_plot({label: k_sweep}, cfg.epsilon),
        })  # fmt: skip
    out.append({
        "name": "max_cos", "title": "Max |cos| of each top tuned vector to the base", "caption": _max_cos_caption(result),
        "png": figures.max_cos_scatter(result.matrices, cfg.epsilon),
    })  # fmt: skip
    for name, title, counts, per, axis in (
        ("by_layer", "Intruders per layer", result.by_layer(), "layer", "layer"),
        ("by_module_type", "Intruders per matrix type", result.by_module_type(), "matrix type", ""),
    ):
        if result.total_intruders == 0:  # an empty chart would only show an axis: say it in words instead
            out.append({"name": name, "title": title, "caption": "", "png": None, "empty": _empty_counts(result, per)})
            continue
        out.append({
            "name": name, "title": title,
            "caption": f"{_subject(result)} (k={cfg.k}, ε={cfg.epsilon}): {_counts_sentence(counts, axis)}.",
            "png": figures.counts_bar(counts, title, per),
        })  # fmt: skip
    if any(m.effective_rank_delta is not None for m in result.matrices):
        out.append({
            "name": "effective_rank", "title": "Effective rank of ΔW (Fig. 6)",
            "caption": _effective_rank_caption(result), "png": figures.effective_rank_plot(result.matrices),
        })  # fmt: skip
    out.append({
        "name": "singular_values", "title": "Top singular values, tuned vs base",
        "caption": _singular_values_caption(highlighted), "png": figures.singular_values_plot(highlighted),
    })  # fmt: skip
    return out


def write_analysis_outputs(result, out_dir: str | Path, *, command: str = "", figures_note: str | None = None) -> dict[str, Path]:
    """Write analysis.json, analysis.csv, figures/*.png and report.html into ``out_dir``; return their paths.

    ``figures_note``: draw no figures (the report says this note instead; a scan of many inputs, whose figures
    would cost more than its analyses)."""
    out_dir = ensure_writable_directory(out_dir)
    data = result.to_json()
    paths: dict[str, Path] = {}
    highlighted = {m.name for m in figures.highlighted_matrices(result.matrices)}
    full = {**data, "matrices": [  # analysis.json: the report's data, plus the heatmaps' similarity matrices
        {**entry, "similarity": m.similarity} if m.name in highlighted and m.similarity is not None else entry
        for entry, m in zip(data["matrices"], result.matrices, strict=True)]}  # fmt: skip
    paths["json"] = write_text_atomic(out_dir / "analysis.json", json.dumps(full, indent=2) + "\n")
    paths["csv"] = write_text_atomic(out_dir / "analysis.csv", result.to_csv())
    figs = build_figures(result) if figures_note is None else []
    for fig in figs:
        if fig["png"] is None:  # an empty state, said in words in the report; no stale PNG of an earlier run
            (out_dir / "figures" / f"{fig['name']}.png").unlink(missing_ok=True)
            continue
        paths[fig["name"]] = write_bytes_atomic(out_dir / "figures" / f"{fig['name']}.png", fig["png"])
        fig["png"] = base64.b64encode(fig["png"]).decode("ascii")
    verdict, bad = _verdict(data)
    n_out = result.matrices[0].shape[0] if result.matrices else 1
    baseline = random_vector_max_cosine(n_out)
    comparison = (
        "well above it" if result.epsilon >= 1.5 * baseline
        else "above it, but close: a random direction scores nearly ε" if result.epsilon > baseline
        else "below it: at this n even a random direction would not count as an intruder"
    )  # fmt: skip
    html = environment().get_template("analysis.html").render(
        title=f"Intruder dimensions: {Path(str(result.tuned)).name or result.tuned}",
        version=version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), data=data, figures=figs,
        verdict=verdict, verdict_bad=bad, n_out=n_out, random_baseline=baseline, baseline_comparison=comparison,
        figures_note=figures_note,
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
    html = environment().get_template("toy.html").render(
        version=version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), sweep=sweep,
        baseline=baseline, sweep_png=base64.b64encode(sweep_png).decode("ascii"),
        baseline_png=base64.b64encode(baseline_png).decode("ascii"), findings=findings,
    )  # fmt: skip
    paths["html"] = write_text_atomic(out_dir / "toy.html", html)
    return paths
