"""The leaderboard of a scan: one row per TUNED input, from that input's analysis (the JSON `analyze` writes),
with predicted vs found intruder-prone matrices; written as leaderboard.json, leaderboard.csv and a
self-contained, sortable leaderboard.html whose rows link to each input's own report."""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from intrudim.fileio import write_bytes_atomic, write_text_atomic
from intrudim.scan.steps import steps_figure_png, steps_table
from intrudim.spectral.prediction import is_predicted
from intrudim.weights.names import short_matrix_name

ROW_KEYS = (
    "tuned", "name", "kind", "total_intruders", "matrices_analysed", "matrices_with_intruders", "energy_share_mean",
    "worst_matrix", "worst_matrix_intruders", "effective_rank", "predicted", "found", "analysis", "resumed", "error",
    "step",
)  # fmt: skip

ENERGY_NOTE = "energy %: the intruders' share of ‖W_t‖²_F, mean over matrices"
"""How every scan output that shows ``energy_share_mean`` as a percentage says what it is."""


def row_from_analysis(
    tuned: str, name: str, data: dict[str, Any], threshold: float, *, resumed: bool
) -> dict[str, Any]:
    """A leaderboard row from an analysis JSON document (``AnalysisResult.to_json()``).

    ``energy_share_mean``: the intruders' share of each matrix's energy, Σ_{j∈I} σ_j² / ‖W_t‖²_F, as a fraction,
    averaged over the analysed matrices (the analysis JSON's ``intruder_energy_share_mean``; people are shown it
    as a percentage, "energy %"). ``worst_matrix``: most intruders, then most energy.
    ``effective_rank``: the mean effective rank of ΔW over matrices (Fig. 6). ``predicted``: the matrices whose
    intruder pressure σ₁(ΔW)/σ_k(W₀) exceeds ``threshold``; ``found``: the matrices with intruders.
    """
    matrices = data["matrices"]
    worst = max(matrices, key=lambda m: (m["intruders"], m["intruder_energy_share"]), default=None)
    ranks = [m["effective_rank_delta"] for m in matrices if m.get("effective_rank_delta") is not None]
    return {
        "tuned": tuned,
        "name": name,
        "kind": data["tuned_kind"],
        "total_intruders": data["total_intruders"],
        "matrices_analysed": data["matrices_analysed"],
        "matrices_with_intruders": data["matrices_with_intruders"],
        "energy_share_mean": data["intruder_energy_share_mean"],
        "worst_matrix": worst["name"] if worst is not None and worst["intruders"] else None,
        "worst_matrix_intruders": worst["intruders"] if worst is not None and worst["intruders"] else 0,
        "effective_rank": (sum(ranks) / len(ranks)) if ranks else None,
        "predicted": [m["name"] for m in matrices if is_predicted(m.get("intruder_pressure"), threshold)],
        "found": [m["name"] for m in matrices if m["intruders"]],
        "analysis": f"runs/{name}/report.html",
        "resumed": resumed,
        "error": None,
    }


def error_row(tuned: str, name: str, error: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(tuned=tuned, name=name, predicted=[], found=[], resumed=False, error=error)
    return row


def prediction_summary(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Precision and recall of "pressure > threshold" against the matrices with intruders, over every scanned
    matrix of every input without an error (None where undefined: nothing predicted, or nothing found)."""
    ok = [r for r in rows if r["error"] is None]
    predicted = sum(len(r["predicted"]) for r in ok)
    found = sum(len(r["found"]) for r in ok)
    both = sum(len(set(r["predicted"]) & set(r["found"])) for r in ok)
    return {
        "threshold": threshold,
        "rule": f"a matrix is predicted intruder-prone when sigma1(dW)/sigma_k(W0) > {threshold:g}",
        "matrices": sum(r["matrices_analysed"] for r in ok),
        "predicted": predicted,
        "found": found,
        "predicted_and_found": both,
        "precision": both / predicted if predicted else None,
        "recall": both / found if found else None,
    }


def leaderboard_document(rows: list[dict[str, Any]], *, base: str, k: int, epsilon: float, threshold: float,
                         extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    document = {
        "base": base, "k": k, "epsilon": epsilon, "rows": rows,
        "prediction": prediction_summary(rows, threshold), **extra,
    }  # fmt: skip
    steps = steps_table(rows)
    if steps:
        document["steps"] = steps
    return document


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([
        "index", "tuned", "name", "kind", "total_intruders", "matrices_analysed", "matrices_with_intruders",
        "energy_share_mean", "worst_matrix", "worst_matrix_intruders", "effective_rank", "predicted", "found",
        "predicted_and_found", "predicted_matrices", "analysis", "error", "step",
    ])  # fmt: skip
    for i, r in enumerate(rows):
        ok = r["error"] is None
        writer.writerow([
            i, r["tuned"], r["name"], r["kind"] or "", "" if not ok else r["total_intruders"],
            "" if not ok else r["matrices_analysed"], "" if not ok else r["matrices_with_intruders"],
            "" if not ok else f"{r['energy_share_mean']:.6f}",
            r["worst_matrix"] or "", "" if not ok else r["worst_matrix_intruders"],
            "" if r["effective_rank"] is None else f"{r['effective_rank']:.4f}", len(r["predicted"]), len(r["found"]),
            len(set(r["predicted"]) & set(r["found"])), ";".join(r["predicted"]), r["analysis"] or "", r["error"] or "",
            "" if r.get("step") is None else r["step"],
        ])  # fmt: skip
    return out.getvalue()


def write_leaderboard(document: dict[str, Any], out_dir: Path, *, command: str) -> dict[str, Path]:
    """leaderboard.json, leaderboard.csv and leaderboard.html in ``out_dir``, each written atomically."""
    steps_png = None
    written: dict[str, Path] = {}
    if document.get("steps"):
        png = steps_figure_png(document["steps"], document["k"], document["epsilon"])
        written["steps_png"] = write_bytes_atomic(out_dir / "intruders_over_steps.png", png)
        steps_png = base64.b64encode(png).decode("ascii")
    html = Environment(autoescape=select_autoescape(default=True)).from_string(TEMPLATE).render(
        doc=document, command=command, generated=_dt.datetime.now().isoformat(timespec="seconds"),
        fmt=_fmt, short=_short, percent=_percent, steps_png=steps_png,
    )  # fmt: skip
    return {
        **written,
        "json": write_text_atomic(out_dir / "leaderboard.json", json.dumps(document, indent=2) + "\n"),
        "csv": write_text_atomic(out_dir / "leaderboard.csv", to_csv(document["rows"])),
        "html": write_text_atomic(out_dir / "leaderboard.html", html),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(fraction: float | None) -> str:
    """A share (0–1) as the percentage people are shown ("energy %"), three significant digits."""
    return "" if fraction is None else f"{100 * fraction:.3g}"


def _short(name: str | None) -> str:
    if not name:
        return ""
    return short_matrix_name(name)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>intrudim scan: {{ doc.base }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; } tr.error td { color: #a00; } tr.bad td.num-intr { color: #b00; font-weight: bold; }
code { background: #f4f4f4; padding: 0 0.2em; } .note { color: #555; max-width: 60em; }
td.error-text { min-width: 28em; max-width: 48em; font-size: 0.9em; }
.wide { overflow-x: auto; }  /* a wide leaderboard scrolls on its own; the page does not cut it */
</style></head><body>
<h1>Intruder dimensions of {{ doc.rows|length }} tuned models of <code>{{ doc.base }}</code></h1>
<p class="note">k = {{ doc.k }}, &epsilon; = {{ doc.epsilon }}: a top-k left singular vector of a tuned matrix is an
intruder when its max |cos| to every base left singular vector is below &epsilon;. Energy %: the intruders' share of
each matrix's squared Frobenius norm, &Sigma;<sub>j&isin;I</sub> &sigma;<sub>j</sub><sup>2</sup> /
&Vert;W<sub>t</sub>&Vert;<sub>F</sub><sup>2</sup>, in percent, mean over the analysed matrices. Click a column to sort;
a name opens that model's own report.</p>
{% set p = doc.prediction %}
<p id="prediction">Prediction (a matrix is predicted intruder-prone when &sigma;<sub>1</sub>(&Delta;W) /
&sigma;<sub>k</sub>(W<sub>0</sub>) &gt; {{ p.threshold }}): {{ p.predicted }} of {{ p.matrices }} matrices predicted, {{ p.found }} with
intruders, {{ p.predicted_and_found }} both; precision <b>{{ fmt(p.precision, 2) or "n/a" }}</b>, recall
<b>{{ fmt(p.recall, 2) or "n/a" }}</b>.</p>
<div class="wide"><table id="leaderboard"><thead><tr>
<th data-type="num">#</th><th class="text" data-type="text">tuned</th><th class="text" data-type="text">kind</th>
<th data-type="num">intruders</th><th data-type="num">matrices with intruders</th><th data-type="num" title="the intruders' share of ‖W_t‖²_F, mean over matrices">energy %</th>
<th class="text" data-type="text">worst matrix</th><th data-type="num">eff. rank &Delta;W</th>
<th data-type="num">predicted</th><th data-type="num">found</th><th data-type="num">both</th>
<th class="text" data-type="text">error</th></tr></thead><tbody>
{% for r in doc.rows %}<tr class="{{ 'error' if r.error else ('bad' if r.total_intruders else '') }}">
<td data-value="{{ loop.index0 }}">{{ loop.index }}</td>
<td class="text" data-value="{{ r.name }}" title="{{ r.tuned }}">{% if r.error %}{{ r.name }}{% else %}<a href="{{ r.analysis }}">{{ r.name }}</a>{% endif %}</td>
<td class="text">{{ r.kind or "" }}</td>
<td class="num-intr" data-value="{{ r.total_intruders if r.total_intruders is not none else '' }}">{{ fmt(r.total_intruders) }}</td>
<td data-value="{{ r.matrices_with_intruders if r.matrices_with_intruders is not none else '' }}">{% if not r.error %}{{ r.matrices_with_intruders }} / {{ r.matrices_analysed }}{% endif %}</td>
<td data-value="{{ r.energy_share_mean if r.energy_share_mean is not none else '' }}">{{ percent(r.energy_share_mean) }}</td>
<td class="text" title="{{ r.worst_matrix or '' }}">{{ short(r.worst_matrix) }}{% if r.worst_matrix %} ({{ r.worst_matrix_intruders }}){% endif %}</td>
<td data-value="{{ r.effective_rank if r.effective_rank is not none else '' }}">{{ fmt(r.effective_rank, 2) }}</td>
{% if r.error %}<td></td><td></td><td></td>{% else %}<td>{{ r.predicted|length }}</td><td>{{ r.found|length }}</td>
<td>{{ (r.predicted|select("in", r.found)|list)|length }}</td>{% endif %}
<td class="text error-text">{{ r.error or "" }}</td></tr>
{% endfor %}</tbody></table></div>
{% if doc.steps %}<h2>Intruders over training steps</h2>
<p class="note" id="steps-note">{{ doc.steps|length }} of the {{ doc.rows|length }} scanned inputs are <code>checkpoint-N</code>
folders, ordered here by training step: a checkpoint's trainer_state.json <code>global_step</code> where it has one,
else the N of its folder name.{% if doc.steps|length < doc.rows|length %} The other inputs are not in this table.{% endif %}</p>
{% if steps_png %}<img id="steps-figure" alt="Intruder dimensions over training steps" src="data:image/png;base64,{{ steps_png }}">{% endif %}
<table id="steps"><thead><tr><th>step</th><th class="text">checkpoint</th><th>intruders</th>
<th>matrices with intruders</th><th title="the intruders' share of ‖W_t‖²_F, mean over matrices">energy %</th></tr></thead><tbody>
{% for s in doc.steps %}<tr><td>{{ s.step }}</td><td class="text">{{ s.name }}</td><td>{{ s.total_intruders }}</td>
<td>{{ s.matrices_with_intruders }}</td><td>{{ percent(s.energy_share_mean) }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
<p class="note">Generated {{ generated }} by <code>{{ command }}</code>.</p>
<script>
document.querySelectorAll("#leaderboard th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var tbody = document.querySelector("#leaderboard tbody");
    var rows = Array.prototype.slice.call(tbody.rows);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var numeric = th.dataset.type === "num";
    document.querySelectorAll("#leaderboard th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    function key(row) {
      var cell = row.cells[column];
      var value = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
      if (!numeric) return value.toLowerCase();
      return value === "" ? null : parseFloat(value);
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null && y === null) return 0;
      if (x === null) return 1;  // rows without a value (errors) stay last
      if (y === null) return -1;
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { tbody.appendChild(row); });
  });
});
</script>
</body></html>
"""
