"""`scan BASE TUNED...`: many adapters, run directories or fine-tuned models of one base, as a leaderboard.

Each TUNED input is analysed exactly as `analyze BASE TUNED --out OUT/runs/<name>` would (the same planning,
the same per-matrix step, the same files), but all inputs share one base SVD cache and one progress bar, and
the work is cut into units (:mod:`intrudim.scan.units`) that run in this process or on Ray
(:mod:`intrudim.scan.ray_engine`). An input that cannot be analysed (another base's adapter, a missing path,
a damaged file) gets its error in its row; the others go on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.progress import ProgressCallback, make_reporter
from intrudim.analysis.results import AnalysisResult
from intrudim.analysis.setup import check_device
from intrudim.errors import IntrudimError
from intrudim.fileio import ensure_writable_directory, write_json_atomic
from intrudim.models.opening import open_base_weights
from intrudim.models.references import resolve_reference
from intrudim.scan import journal
from intrudim.scan.config import FIGURES_AUTO_MAX, ScanConfig
from intrudim.scan.inputs import expand_inputs, run_names
from intrudim.scan.leaderboard import error_row, leaderboard_document, row_from_analysis, write_leaderboard
from intrudim.scan.steps import step_of
from intrudim.scan.units import (
    BaseUnit,
    MatrixUnit,
    PlannedInput,
    ReportUnit,
    UnitOutcome,
    base_units_of,
    plan_input,
    write_input_analysis,
)
from intrudim.weights.svd_cache import default_cache_dir

MANIFEST = "scan.json"
RUN_FILES = (
    "analysis.json",
    "analysis.csv",
    "report.html",
)  # report.html is written last: its presence = finished


@dataclass
class ScanResult:
    """A finished scan: the leaderboard document (rows in input order) and where it was written."""

    document: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    # input index -> analysis (this run's), only with scan(..., keep_analyses=True): every input's is on disk
    analyses: dict[int, AnalysisResult] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.document["rows"]


def scan(
    base: str | Path,
    tuned: list[str | Path],
    out: str | Path,
    config: ScanConfig | None = None,
    *,
    pattern: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | ProgressCallback = False,
    command: str = "",
    keep_analyses: bool = False,
) -> ScanResult:
    """Analyse every TUNED input against BASE; write OUT/runs/<name>/ (as `analyze --out`) and the leaderboard.

    Each input is analysed exactly as :func:`intrudim.analyze` would (the same planning and per-matrix step, Sec.
    3–4), over one shared base SVD cache, in this process or on Ray; an input that cannot be analysed gets its
    error in its row while the others go on.

    Args:
        base: The base model every input was fine-tuned from (embedded name, folder, ``.safetensors`` file or Hub
            id).
        tuned: The inputs: PEFT adapters, intrudim runs, a Trainer ``output_dir`` (its ``checkpoint-N`` folders,
            by step) or fine-tuned models.
        out: Folder for ``leaderboard.json``/``.csv``/``.html``, ``scan.json`` and one ``runs/<name>/`` per input.
        config: A :class:`~intrudim.scan.config.ScanConfig` (default: ``ScanConfig()``: k = 10, ε = 0.5,
            in-process, matrix-major from two inputs on).
        pattern: A glob whose matches are scanned after ``tuned`` (natural order).
        cache_dir: The base SVD cache shared by every unit; by default the one every verb uses
            (``$INTRUDIM_CACHE`` or the user's cache, :func:`~intrudim.weights.svd_cache.default_cache_dir`), so
            that a scan of adapters already analysed computes no base SVD. With ``config.resume`` inputs finished
            in OUT are read back, not redone.
        progress: True for one progress bar over every unit (plain lines without a terminal), or a callback
            ``(done, total, what)``; default False.
        command: The command line to record in each report (default: none).
        keep_analyses: Also return every input's :class:`AnalysisResult` in ``ScanResult.analyses`` (default
            False: once an input's files and row are written its analysis is dropped, so that memory does not grow
            with the number of inputs; ``OUT/runs/<name>/analysis.json`` holds all of it).

    Returns:
        A :class:`ScanResult`: the leaderboard document (rows in input order) and the paths written.
    """
    config = config or ScanConfig()
    analysis = config.analysis
    check_device(analysis.device)
    started = time.perf_counter()
    base = str(base)
    inputs = expand_inputs([str(t) for t in tuned], pattern)
    names = run_names(inputs)
    # BASE resolved (an embedded name, a Hub id…) and opened before OUT is touched: a failed start leaves nothing
    # to --resume. Units resolve the same references again where they run (in this process or on Ray workers).
    _check_base(base, analysis.allow_pickle)
    out_dir = _prepare_out(Path(out), base, config)
    cache = str(Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve())

    rows: dict[int, dict[str, Any]] = {}
    planned: list[PlannedInput] = []
    for index, (spec, name) in enumerate(zip(inputs, names, strict=True)):
        done = _finished_analysis(out_dir / "runs" / name, spec) if config.resume else None
        if done is not None:
            rows[index] = row_from_analysis(spec, name, done, config.pressure_threshold, resumed=True)
            continue
        item = plan_input(base, spec, index, name, analysis)
        if item.error is not None:
            rows[index] = error_row(spec, name, item.error)
        else:
            planned.append(item)

    base_units = base_units_of(planned)
    order = scan_order(config.order, len(planned))
    batch = batch_size(planned, analysis, config.memory_budget_mb) if order == "matrix" else 1
    matrix_units = ordered_units(planned, base_units, order, batch)
    no_figures = None if config.draws_figures(len(inputs)) else (len(inputs), base)
    collector = _Collector(planned, out_dir, config.pressure_threshold, rows, command, keep_analyses, no_figures)
    # --resume: matrices an interrupted scan finished (its journal) are not analysed again
    earlier = {item.index: journal.recorded(out_dir, item.name, item.tuned) for item in planned} if config.resume else {}
    resumed = [unit for unit in matrix_units if unit.job.base_key in earlier.get(unit.index, {})]
    matrix_units = [unit for unit in matrix_units if unit.job.base_key not in earlier.get(unit.index, {})]
    total = len(base_units) + len(matrix_units) + len(planned)  # + one report unit per input
    reporter = make_reporter(progress, total, "scan", what="steps (base SVDs, matrices, reports)")
    finished = 0
    rows_at_start = len(rows)  # inputs resumed whole, or that failed planning
    base_svds = {"hits": 0, "misses": 0}  # base SVD units: found in the cache, or computed

    def on_done(unit: BaseUnit | MatrixUnit | ReportUnit, outcome: UnitOutcome):
        nonlocal finished
        finished += 1
        if isinstance(unit, BaseUnit) and outcome.error is None:
            base_svds["hits" if outcome.cache_hit else "misses"] += 1
        ready = [] if isinstance(unit, BaseUnit) else collector.add(unit, outcome)
        if reporter is not None:
            if isinstance(unit, BaseUnit):
                what = f"base SVD {unit.base_key}"
            elif isinstance(unit, MatrixUnit):
                what = f"{names[unit.index]}: {unit.job.base_key}"
            else:
                what = f"{names[unit.index]}: report"
            done = finished + collector.reports_dropped  # an input with a failed matrix has no report unit
            inputs_done = len(rows) - rows_at_start
            if inputs_done and done != total:  # the rate a user plans by: inputs finished per hour (or minute)
                elapsed = max(time.perf_counter() - started, 1e-9)
                rate = (f"{3600 * inputs_done / elapsed:,.0f}/hour" if inputs_done / elapsed < 1 / 60
                        else f"{60 * inputs_done / elapsed:,.0f}/minute")  # fmt: skip
                what = f"{what} ({inputs_done}/{len(planned)} inputs done, {rate})"
            reporter(done, total, "done" if done == total else what)
        return ready

    try:
        if reporter is not None:
            reporter(0, total, "base SVDs" if base_units else "resumed: nothing left to do")
        for unit in resumed:  # their inputs' reports, where every matrix was done, are written at once
            for report, outcomes in collector.add(unit, earlier[unit.index][unit.job.base_key], to_journal=False):
                on_done(report, write_input_analysis(base, report, outcomes, analysis))
        if config.engine == "ray" and matrix_units:
            from intrudim.scan.ray_engine import run_units_on_ray

            run_units_on_ray(base, base_units, matrix_units, config, cache, on_done)
        else:
            from intrudim.scan.units import run_units_here

            run_units_here(base, base_units, matrix_units, analysis, cache, on_done)
    finally:
        if hasattr(reporter, "close"):
            reporter.close()  # type: ignore[union-attr]

    ordered = [rows[i] for i in range(len(inputs))]
    for spec, row in zip(inputs, ordered, strict=True):
        row["step"] = step_of(spec)
    engine = {"engine": config.engine, "ray_address": config.ray_address, "ray_cpus": config.ray_cpus}
    document = leaderboard_document(
        ordered, base=base, k=analysis.k, epsilon=analysis.epsilon, threshold=config.pressure_threshold,
        extra={"units": {"base_svd": len(base_units), "matrix": len(matrix_units)}, "order": order, "batch": batch,
               "resumed_matrices": len(resumed), "cache": cache,
               "base_svd_cache": base_svds, "seconds": round(time.perf_counter() - started, 3), **engine},
    )  # fmt: skip
    paths = write_leaderboard(
        document, out_dir, command=command or f"intrudim scan {base} ... --out {out_dir}"
    )
    return ScanResult(document=document, paths=paths, analyses=collector.analyses)


def scan_order(order: str, inputs: int) -> str:
    """``matrix`` or ``adapter``: what :attr:`ScanConfig.order` means for this many inputs to analyse."""
    if order != "auto":
        return order
    return "matrix" if inputs >= 2 else "adapter"


def ordered_units(
    planned: list[PlannedInput], base_units: list[BaseUnit], order: str, batch: int = 1
) -> list[MatrixUnit]:
    """Every (input, matrix) unit. ``adapter``: input by input, each in its planned order (each input reads every
    base factor it needs). ``matrix``: the inputs in batches of ``batch``; within a batch, base matrix by base
    matrix (first-use order), every input's unit for it in a row, so that its cached factors are read once per
    batch (:data:`~intrudim.scan.units.RECENT_FACTORS`). A batch's inputs are finished (reports written, their
    results let go) before the next batch starts."""
    units = [MatrixUnit(item.index, item.tuned, job) for item in planned for job in item.jobs]
    if order == "adapter":
        return units
    position = {unit: number for number, unit in enumerate(base_units)}
    batch_of = {item.index: number // batch for number, item in enumerate(planned)}
    # stable: inputs in order within a matrix
    return sorted(units, key=lambda unit: (batch_of[unit.index], position[unit.base_unit]))


RESULT_BYTES_PER_VALUE = 40
"""Memory per number a matrix result holds (a Python float in a list, with its slot), for :func:`batch_size`."""


def batch_size(planned: list[PlannedInput], config: AnalyzeConfig, budget_mb: int | None) -> int:
    """How many inputs a matrix-major batch holds: their results (per matrix: the k-row similarity block, the top-k
    values, the sweeps) kept until each input's last matrix is in must fit ``budget_mb`` (default: a quarter of the
    memory available now). At least 1."""
    if not planned:
        return 1
    if budget_mb is None:
        import psutil

        budget_mb = psutil.virtual_memory().available // (4 * 2**20)
    per_matrix = (config.k * (config.similarity_size + 6) + 2 * len(config.epsilons) + 64) * RESULT_BYTES_PER_VALUE
    per_input = max(len(item.jobs) for item in planned) * per_matrix
    return max(1, min(len(planned), int(budget_mb * 2**20 // per_input)))


def _check_base(base: str, allow_pickle: bool) -> None:
    """BASE must resolve and open (a missing or unreadable BASE is the whole scan's error, not every row's)."""
    reference = resolve_reference(base, role="base", allow_pickle=allow_pickle)
    open_base_weights(reference, allow_pickle=allow_pickle).close()


def _prepare_out(out_dir: Path, base: str, config: ScanConfig) -> Path:
    """Refuse a non-empty OUT without --resume; with it, refuse one made by a different scan (base, k, ε…)."""
    settings = {"base": base, "analysis": {k: (list(v) if isinstance(v, tuple) else v)
                                           for k, v in asdict(config.analysis).items()}}  # fmt: skip
    manifest = out_dir / MANIFEST
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not config.resume:
            raise IntrudimError(
                f"--out '{out_dir}' is not empty. Use --resume to continue the scan there (finished inputs are "
                f"skipped), or choose an empty or new directory."
            )
        if manifest.exists():
            earlier = json.loads(manifest.read_text(encoding="utf-8"))
            changed = [key for key in ("k", "epsilon", "modules", "include_embeddings", "include_heads", "method",
                                       "cache_dtype", "k_sweep", "effective_rank")
                       if earlier.get("analysis", {}).get(key) != settings["analysis"][key]]  # fmt: skip
            if earlier.get("base") != base:
                changed.insert(0, "base")
            if changed:
                was = {key: earlier.get(key, earlier.get("analysis", {}).get(key)) for key in changed}
                raise IntrudimError(
                    f"--resume: '{out_dir}' holds a scan with different settings ({', '.join(changed)}: was {was}). "
                    f"Resume with the same BASE and options, or scan into another --out."
                )
    ensure_writable_directory(out_dir)
    write_json_atomic(manifest, settings)
    return out_dir


def _finished_analysis(run_dir: Path, spec: str) -> dict[str, Any] | None:
    """The analysis JSON of an input finished by an earlier scan into this OUT (same TUNED), else None."""
    if not all((run_dir / name).exists() for name in RUN_FILES):
        return None
    try:
        data = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("tuned") == spec else None


def figures_skipped(inputs: int, base: str, tuned: str) -> str:
    """What an input's report says instead of its figures in a scan that draws none (``ScanConfig.figures``)."""
    return (f"No figures: this scan of {inputs} inputs drew none (scan --figures auto draws them up to "
            f"{FIGURES_AUTO_MAX} inputs; --figures all always). The tables below are complete; `intrudim analyze "
            f"{base} {tuned} --out DIR` draws this input's figures.")


class _Collector:
    """Gathers matrix outcomes per input. When an input's last matrix is in, it hands back that input's report
    unit (which writes the files `analyze --out` writes); the report's outcome makes the row. An input with a
    failed unit gets the error in its row."""

    def __init__(self, planned: list[PlannedInput], out_dir: Path, threshold: float, rows: dict[int, dict[str, Any]],
                 command: str, keep_analyses: bool = False, no_figures: tuple[int, str] | None = None) -> None:  # fmt: skip
        self.planned = {item.index: item for item in planned}
        self.outcomes: dict[int, dict[str, UnitOutcome]] = {item.index: {} for item in planned}
        self.out_dir, self.threshold, self.rows, self.command = out_dir, threshold, rows, command
        self.keep_analyses = keep_analyses
        self.no_figures = no_figures  # (inputs, base) of a scan that draws no figures: each report says why
        self.analyses: dict[int, AnalysisResult] = {}
        self.reports_dropped = 0  # inputs with a failed matrix unit: no report unit runs for them

    def add(
        self, unit: MatrixUnit | ReportUnit, outcome: UnitOutcome, *, to_journal: bool = True
    ) -> list[tuple[ReportUnit, list[UnitOutcome]]]:
        """Take one unit's outcome; hand back the report units that became ready. A finished matrix goes to the
        input's journal (:mod:`intrudim.scan.journal`) unless it came from there (``to_journal=False``)."""
        item = self.planned[unit.index]
        if isinstance(unit, ReportUnit):
            if outcome.error is not None or outcome.analysis is None:
                self.rows[item.index] = error_row(
                    item.tuned, item.name, outcome.error or "no analysis came back"
                )
            else:
                if self.keep_analyses:
                    self.analyses[item.index] = outcome.analysis
                self.rows[item.index] = row_from_analysis(item.tuned, item.name, outcome.analysis.to_json(),
                                                          self.threshold, resumed=False)  # fmt: skip
                journal.forget(self.out_dir, item.name)
            return []
        if to_journal and outcome.result is not None:
            journal.record(self.out_dir, item.name, item.tuned, unit.job.base_key, outcome)
        outcomes = self.outcomes[unit.index]
        outcomes[unit.job.base_key] = outcome
        if len(outcomes) < len(item.jobs):
            return []
        del self.outcomes[unit.index]
        ordered = [outcomes[job.base_key] for job in item.jobs]
        errors = [o.error for o in ordered if o.error is not None]
        if errors:
            self.rows[item.index] = error_row(item.tuned, item.name, errors[0])
            self.reports_dropped += 1
            journal.forget(self.out_dir, item.name)  # a failed input is analysed whole again when resumed
            return []
        report = ReportUnit(
            index=item.index, tuned=item.tuned, tuned_kind=item.tuned_kind or "lora",
            skipped=tuple((entry["name"], entry["reason"]) for entry in item.skipped),
            out_dir=str(self.out_dir / "runs" / item.name),
            command=f"{self.command}  # input {item.index + 1}: {item.tuned}" if self.command else "",
            figures_note=None if self.no_figures is None else figures_skipped(*self.no_figures, item.tuned),
        )  # fmt: skip
        return [(report, ordered)]
