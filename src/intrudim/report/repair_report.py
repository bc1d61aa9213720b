"""The HTML reports of `repair`: OUT/report.html for a repair (per matrix: the ranks scaled, σ before → after, the
intruders left; the control, λ, k, ε and what was written) and for ``--sweep`` (the λ figure, every method × λ, the
controls explained, and the regime: the measure and its unit, the text, the task).

Self-contained (figures embedded as base64 PNG, so the page can be mailed) and written atomically, like every
other report (:mod:`intrudim.report.analysis_report`, :mod:`intrudim.report.forgetting_report`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import shlex
from pathlib import Path
from typing import Any

from intrudim.fileio import write_text_atomic
from intrudim.report.templating import environment, version

REPORT_NAME = "report.html"

CONTROL_DESCRIPTIONS = {
    "none": "the intruders themselves: their singular values scaled by λ (the v2 intervention)",
    "non-intruder": "control: as many of the top non-intruder directions of W_t scaled by λ (the intruders stay)",
    "shrink": "control: W₀ + c·ΔW, c per matrix removing the same Frobenius norm as the intruder repair",
}


def rank_list(ranks: list[int]) -> str:
    """[1, 3] → '#1, #3': singular-vector ranks, not counts."""
    return ", ".join(f"#{r}" for r in ranks)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def intruders_before_after_figure(matrices: list[dict[str, Any]]) -> bytes:
    """PNG: intruders per layer in W_t (before) and in the repaired W′ (after), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from intrudim.weights.selection import layer_index

    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for m in matrices:
        layer = layer_index(m["name"])
        label = "other" if layer is None else str(layer)
        before[label] = before.get(label, 0) + len(m["intruder_ranks"])
        after[label] = after.get(label, 0) + len(m["remaining_ranks"] or [])
    labels = sorted(before, key=lambda x: (x == "other", int(x) if x.isdigit() else 0))
    positions = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(labels) + 2.5), 3.4))
    width = 0.42
    ax.bar([x - width / 2 for x in positions], [before[label] for label in labels], width, color="#999999",
           label="before (W_t)")  # fmt: skip
    ax.bar([x + width / 2 for x in positions], [after[label] for label in labels], width, color="#d62728",
           label="after the repair (W′)")  # fmt: skip
    ax.set_xticks(list(positions), labels, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("intruder dimensions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------------------- repair


def _written(data: dict[str, Any]) -> str:
    if data.get("unchanged"):
        return "nothing to scale: a bit-for-bit copy of the input"
    if data.get("output_kind") == "adapter":
        modules = sum(1 for m in data["matrices"] if m["rank_added"])
        saved_whole = sum(1 for m in data["matrices"] if m["removed_frobenius"] > 0 and m["module"] is None)
        text = "a PEFT LoRA adapter"
        if modules:
            text += f"; {modules} modules get rank r + |I| (rank_pattern / alpha_pattern)"
        if data["control"] == "shrink":
            text += "; the changed modules' B factors are scaled by c, at the same rank"
        if saved_whole:
            text += f"; {saved_whole} weights the adapter saved whole, repaired and written back whole"
        return text + ". Load it with PeftModel.from_pretrained(model, path)."
    if data.get("tuned_kind") == "lora":
        return "BASE with the repaired adapter merged in (by peft), sharded like BASE"
    return "the fine-tuned model with the repaired matrices, sharded like the input"


def _repair_verdict(data: dict[str, Any]) -> tuple[list[str], bool]:
    k, eps, lam, control = data["k"], data["epsilon"], data["lambda"], data["control"]
    total = data["total_intruders"]
    hit = sum(1 for m in data["matrices"] if m["intruder_ranks"])
    if total == 0:
        return [f"No intruder dimensions (k={k}, ε={eps}): nothing to scale; the output is a copy of the input."], False
    what = {"none": "the intruders' singular values", "non-intruder": "as many non-intruder directions (control)",
            "shrink": "all of ΔW, norm-matched (control)"}[control]  # fmt: skip
    lines = [f"{total} intruder dimensions in {hit} of {len(data['matrices'])} matrices (k={k}, ε={eps}); "
             f"λ = {lam:g} scaled {what} in {data['matrices_changed']} matrices."]  # fmt: skip
    remaining = data.get("remaining_intruders")
    if remaining is None:
        return lines, True
    where = f" in {data['matrices_with_remaining_intruders']} matrices" if remaining else ""
    lines.append(f"After the repair: {remaining} intruder dimensions remain{where}, counted on the output as "
                 f"intrudim analyze counts them.")  # fmt: skip
    if remaining and control == "none" and lam > 0:
        lines.append(f"A singular value scaled by λ = {lam:g} can still rank in the top-{k} and still be a new "
                     f"direction; a smaller λ (0 removes the directions) leaves fewer.")  # fmt: skip
    return lines, remaining > 0


def repair_command_line(data: dict[str, Any], out_dir: Path) -> str:
    """The `intrudim repair` command that writes this repair again."""
    args = ["intrudim", "repair", str(data["base"]), str(data["tuned"]), "--out", str(out_dir),
            "--lambda", f"{data['lambda']:g}", "--k", str(data["k"]), "--epsilon", f"{data['epsilon']:g}"]  # fmt: skip
    if data["control"] != "none":
        args += ["--control", data["control"]]
    if data.get("tuned_kind") == "lora" and data.get("output_kind") == "model":
        args.append("--merged")
    return " ".join(shlex.quote(a) for a in args)


def write_repair_report(result: Any, out_dir: str | Path, *, command: str = "") -> Path:
    """OUT/report.html for a :class:`~intrudim.repair.core.RepairResult` (or its ``to_json()`` dict)."""
    out_dir = Path(out_dir)
    data = result if isinstance(result, dict) else result.to_json()
    rows = []
    for m in data["matrices"]:
        if not (m["intruder_ranks"] or m["remaining_ranks"] or m["removed_frobenius"] > 0):
            continue
        rows.append({**m, "sigmas": list(zip(m["sigma_before"], m["sigma_after"], strict=True))})
    figures = []
    if data["total_intruders"] and data.get("remaining_intruders") is not None:
        png = intruders_before_after_figure(data["matrices"])
        figures.append({
            "title": "Intruders per layer, before and after the repair",
            "caption": f"Intruder dimensions among each matrix's top-{data['k']} singular vectors (ε = {data['epsilon']}), "
            f"summed per layer: in W_t as tuned (grey) and in the repaired W′ (red), counted on the output as "
            f"intrudim analyze counts them.",
            "png": base64.b64encode(png).decode("ascii"),
        })  # fmt: skip
    verdict, bad = _repair_verdict(data)
    scaled_header = {"none": "intruder ranks scaled", "non-intruder": "non-intruder ranks scaled",
                     "shrink": "what was scaled"}[data["control"]]  # fmt: skip
    html = environment().get_template("repair.html").render(
        kind="repair", title=f"Repair: {Path(str(data['tuned'])).name or data['tuned']} (λ = {data['lambda']:g})",
        version=version(), generated=_dt.datetime.now().isoformat(timespec="seconds"), data=data, rows=rows,
        hidden=len(data["matrices"]) - len(rows), figures=figures, verdict=verdict, verdict_bad=bad,
        matrices_with_intruders=sum(1 for m in data["matrices"] if m["intruder_ranks"]),
        control_description=CONTROL_DESCRIPTIONS[data["control"]], written=_written(data),
        scaled_header=scaled_header, ranks=rank_list,
        command=command or repair_command_line(data, out_dir),
    )  # fmt: skip
    return write_text_atomic(out_dir / REPORT_NAME, html)


# -------------------------------------------------------------------------------------------------------- sweep

SWEEP_COLUMNS = {"accuracy": "accuracy", "task_loss": "task-text loss", "forgetting_loss": "text loss",
                 "removed_frobenius": "‖W′ − W_t‖_F"}  # fmt: skip


def sweep_findings(result: Any) -> list[str]:
    """What the sweep shows, in sentences: per measure, TUNED (λ = 1) against each method at the smallest λ."""
    from intrudim.spectral.repair import METHOD_LABELS

    lambdas = sorted({p.lam for p in result.points if p.lam != 1.0})
    lines = [f"{result.total_intruders} intruder dimensions in {result.matrices_with_intruders} matrices "
             f"(k={result.k}, ε={result.epsilon})."]  # fmt: skip
    if not lambdas:
        return lines
    lam = lambdas[0]
    methods = list(dict.fromkeys(p.method for p in result.points))
    loss = result.loss
    for key, what, fmt in (("forgetting_loss", "loss on the text", "%.4f"), ("task_loss", "loss on the task text",
                           "%.4f"), ("accuracy", f"accuracy on {result.task}", "%.3f")):  # fmt: skip
        tuned = next((getattr(p, key) for p in result.points if p.lam == 1.0), None)
        if tuned is None:
            continue
        unit = f" {loss.unit}" if key != "accuracy" and loss is not None else ""
        parts = [f"{METHOD_LABELS[m]} {fmt % getattr(result.point(lam, m), key)}" for m in methods]
        line = f"{what[0].upper()}{what[1:]}: TUNED {fmt % tuned}{unit}"
        if key == "forgetting_loss" and result.base_loss is not None:
            line += f" (BASE {result.base_loss:.4f}, forgetting {tuned - result.base_loss:+.4f})"
        if key == "task_loss" and result.base_task_loss is not None:
            line += f" (BASE {result.base_task_loss:.4f})"
        lines.append(f"{line}; at λ = {lam:g}: {', '.join(parts)}.")
    return lines


def write_sweep_report(result: Any, out_dir: str | Path, *, figure: bytes | None = None, command: str = "") -> Path:
    """OUT/report.html for a :class:`~intrudim.repair.sweep.RepairSweepResult`; ``figure``: its PNG
    (drawn here when not given)."""
    from intrudim.report.repair_figures import sweep_figure, sweep_panels

    out_dir = Path(out_dir)
    data = result.to_json()
    png = figure if figure is not None else sweep_figure(result)
    panels = sweep_panels(result)
    caption = ("Each measure against λ, one line per method; λ = 1 is TUNED as trained, the dotted line BASE. "
               + " ".join(f"{title}: {label.replace(chr(10), ', ')}." for _, label, title in panels))  # fmt: skip
    figures = [{"title": "Repair sweep: the measures against λ", "caption": caption,
                "png": base64.b64encode(png).decode("ascii")}]  # fmt: skip
    shown = [key for key in ("accuracy", "task_loss", "forgetting_loss")
             if any(p.get(key) is not None for p in data["points"])]  # fmt: skip
    loss = result.loss
    lambdas = ", ".join(f"{lam:g}" for lam in sorted({p.lam for p in result.points}))
    html = environment().get_template("repair.html").render(
        kind="sweep", title=f"Repair sweep: {Path(str(data['tuned'])).name or data['tuned']}", version=version(),
        generated=_dt.datetime.now().isoformat(timespec="seconds"), data=data, figures=figures,
        verdict=sweep_findings(result), verdict_bad=False, shown=shown, columns=SWEEP_COLUMNS,
        labels={key: data["labels"][key] for key in (*shown, "removed_frobenius") if key in data["labels"]},
        base_loss_text="" if result.base_loss is None or loss is None else loss.describe(result.base_loss),
        base_task_loss_text="" if result.base_task_loss is None or loss is None else loss.describe(result.base_task_loss),
        lambdas=lambdas, command=command or f"intrudim repair {data['base']} {data['tuned']} --sweep {lambdas} "
        f"--out {out_dir}",
    )  # fmt: skip
    return write_text_atomic(out_dir / REPORT_NAME, html)
