"""The work units of a scan, the same whichever engine runs them (this process or a Ray worker).

A scan is planned once (:func:`plan_scan`: which matrices of which TUNED input, as `analyze` plans them) and
then run as units over one shared base SVD cache directory:

1. one :class:`BaseUnit` per distinct base matrix: its thin SVD, computed once and stored in the cache;
2. one :class:`MatrixUnit` per (TUNED input, matrix): :func:`intrudim.analysis.jobs.read_job` and
   ``analyze_read``, the steps `analyze` runs for each matrix, reading the base factors from the cache (the
   in-process engine reads the next unit in a background thread while this one is analysed, as `analyze` does);
3. one :class:`ReportUnit` per TUNED input once its matrices are in: the files `analyze --out` writes (JSON,
   CSV, figures, report), under OUT/runs/<name>/ (figures take longer than a warm analysis: they run in parallel
   too).

Each unit function opens what it needs by path, so a unit can run in any process that sees the files; a
process keeps a few opened inputs (:func:`opened_inputs`) so that units of one adapter do not re-read headers.
A unit never raises for a problem with the user's files: it returns a :class:`UnitOutcome` with the message,
which ends up in that input's leaderboard row while the scan goes on.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.jobs import (
    ReadJob,
    analyze_read,
    analyze_reads,
    batchable,
    hashed_lookup,
    read_job,
    remembered_key,
)
from intrudim.analysis.planning import (
    AnalysisInputs,
    MatrixJob,
    check_finite,
    open_inputs,
    oriented,
)
from intrudim.analysis.prefetch import read_ahead
from intrudim.analysis.results import AnalysisResult, MatrixResult
from intrudim.analysis.setup import open_cache
from intrudim.analysis.top_k_pool import helper_processes
from intrudim.errors import IntrudimError
from intrudim.models.opening import open_base_weights, open_tuned
from intrudim.models.references import resolve_reference
from intrudim.threads import analysis_threads
from intrudim.weights.peft_adapter import LoraAdapter
from intrudim.weights.svd_cache import BaseSVDCache, RecentFactors


@dataclass(frozen=True)
class BaseUnit:
    """The thin SVD of one base matrix (in the orientation analysed)."""

    base_key: str
    transpose: bool


@dataclass(frozen=True)
class MatrixUnit:
    """One matrix of one TUNED input: ``job`` of input number ``index``."""

    index: int
    tuned: str
    job: MatrixJob

    @property
    def base_unit(self) -> BaseUnit:
        return BaseUnit(self.job.base_key, self.job.transpose)


@dataclass(frozen=True)
class ReportUnit:
    """Writing the analysis of input number ``index`` (all its matrices done) to ``out_dir``."""

    index: int
    tuned: str
    tuned_kind: str
    skipped: tuple[tuple[str, str], ...]  # (name, reason) of the matrices left out, as `analyze` reports them
    out_dir: str
    command: str = ""
    figures_note: str | None = None  # None: draw the figures; else the report says this instead


@dataclass
class UnitOutcome:
    """What a unit returns: a matrix result (matrix units), an analysis (report units), or the error message
    meant for the user."""

    result: MatrixResult | None = None
    analysis: AnalysisResult | None = None
    error: str | None = None
    cache_hit: bool = False
    seconds: float = 0.0


@dataclass
class PlannedInput:
    """One TUNED input after planning: its matrix jobs, or the error that keeps it out of the scan."""

    index: int
    tuned: str
    name: str  # its directory under OUT/runs/
    tuned_kind: str | None = None
    jobs: list[MatrixJob] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


def describe_error(exc: BaseException) -> str:
    """An error as one line for a leaderboard row: an IntrudimError's own message, otherwise its type too."""
    if isinstance(exc, IntrudimError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def plan_input(base: str, tuned: str, index: int, name: str, config: AnalyzeConfig) -> PlannedInput:
    """Plan one TUNED input as `analyze` would; an input that does not fit BASE gets its error, not an exception."""
    planned = PlannedInput(index=index, tuned=tuned, name=name)
    try:
        with open_inputs(base, tuned, config) as inputs:
            planned.tuned_kind = inputs.tuned_kind
            planned.jobs = list(inputs.jobs)
            planned.skipped = list(inputs.skipped)
    except (IntrudimError, OSError, ValueError, KeyError) as exc:
        planned.error = describe_error(exc)
    return planned


def base_units_of(planned: list[PlannedInput]) -> list[BaseUnit]:
    """The distinct base matrices that the planned inputs need, in first-use order."""
    units: dict[BaseUnit, None] = {}
    for item in planned:
        for job in item.jobs:
            units.setdefault(BaseUnit(job.base_key, job.transpose), None)
    return list(units)


OPENED_INPUTS = 256
"""How many TUNED inputs a process keeps open (headers read, tensors not): a matrix-major scan cycles through every
input for each base matrix, so up to this many are not reopened per matrix."""


@functools.lru_cache(maxsize=OPENED_INPUTS)
def opened_inputs(base: str, tuned: str, allow_pickle: bool) -> AnalysisInputs:
    """BASE and TUNED opened for units (headers read once per process, tensors read per unit). BASE is opened once
    (:func:`opened_base`) for every input; the :data:`OPENED_INPUTS` most recent inputs stay open."""
    base_src = opened_base(base, allow_pickle)
    opened = open_tuned(resolve_reference(tuned, role="tuned"), allow_pickle=allow_pickle)
    if isinstance(opened, LoraAdapter):
        return AnalysisInputs(base, tuned, base_src, opened, None, [])
    return AnalysisInputs(base, tuned, base_src, None, opened, [])


@functools.lru_cache(maxsize=1)
def opened_base(base: str, allow_pickle: bool):
    return open_base_weights(resolve_reference(base, role="base"), allow_pickle=allow_pickle)


def compute_base_svd(base: str, unit: BaseUnit, config: AnalyzeConfig, cache_dir: str) -> UnitOutcome:
    """Unit 1: the thin SVD of one base matrix, into the cache directory (a hit when it is there already).

    Through the cache's key memo, as `analyze` reads: a base matrix whose file has not changed since it was hashed
    is neither read nor hashed when its entry is there, and a matrix that is hashed has its key remembered, so that
    the matrix units after it (and the next scan) hash nothing."""
    started = time.perf_counter()
    try:
        source = opened_base(base, config.allow_pickle)
        cache = open_cache(config, cache_dir, use_cache=True)
        key = remembered_key(cache, source, unit.base_key, unit.transpose)
        if key is not None and cache.path_for(key).exists():
            return UnitOutcome(cache_hit=True, seconds=time.perf_counter() - started)

        def read() -> torch.Tensor:
            W0 = oriented(source.load(unit.base_key), unit.transpose)
            check_finite(W0, unit.base_key, f"BASE '{source.path}'")
            return W0

        # hashed (and the key remembered) but not loaded: the unit only needs to know the entry is there
        W0, found = hashed_lookup(cache, source, unit.base_key, unit.transpose, read, load=False)
        if found.key is not None and cache.path_for(found.key).exists():
            return UnitOutcome(cache_hit=True, seconds=time.perf_counter() - started)
        with analysis_threads():  # as `analyze` computes it
            cache.resolve(W0, found)
        return UnitOutcome(cache_hit=cache.hits == 1, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - reported in the rows of the inputs that need this matrix
        return UnitOutcome(error=describe_error(exc), seconds=time.perf_counter() - started)


MATRIX_UNIT_TORCH_THREADS = 1
"""torch threads of a matrix unit, in every engine. The unit's products are small (the structured core), so one
thread is also the fastest; and a fixed count makes the values independent of where a unit runs: torch's
reductions split by thread count, so 1 vs 2 threads differ in the last bits (e.g. an energy share)."""


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` intra-op threads for the block (restored after)."""
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


RECENT_FACTORS = RecentFactors()
"""This process's last base factors read from the cache, kept for the next unit of the same base matrix: in a
matrix-major scan every input's unit for one matrix reads them from disk once (:class:`RecentFactors`)."""


def unit_cache(config: AnalyzeConfig, cache_dir: str) -> BaseSVDCache:
    """The base SVD cache as a unit opens it, sharing :data:`RECENT_FACTORS` with the other units of the process."""
    cache = open_cache(config, cache_dir, use_cache=True)
    cache.recent = RECENT_FACTORS
    return cache


def read_matrix_unit(base: str, unit: MatrixUnit, config: AnalyzeConfig, cache_dir: str) -> ReadJob | Exception:
    """What unit 2 reads from disk (:func:`~intrudim.analysis.jobs.read_job`: W₀ hashed, its cache entry, the
    factors or W_t), or the exception that reading raised; the in-process engine reads the next unit ahead."""
    try:
        inputs = opened_inputs(base, unit.tuned, config.allow_pickle)
        return read_job(inputs, unit.job, unit_cache(config, cache_dir), config)
    except Exception as exc:  # noqa: BLE001 - reported by analyze_matrix as the unit's error
        return exc


def analyze_matrix(
    base: str, unit: MatrixUnit, config: AnalyzeConfig, cache_dir: str, read: ReadJob | Exception | None = None
) -> UnitOutcome:
    """Unit 2: one matrix of one TUNED input, as `analyze` analyses it (the base SVD from the cache), on
    :data:`MATRIX_UNIT_TORCH_THREADS` torch threads. ``read``: the unit's :func:`read_matrix_unit`, when it was read
    ahead (read here otherwise)."""
    started = time.perf_counter()
    try:
        if read is None:
            read = read_matrix_unit(base, unit, config, cache_dir)
        if isinstance(read, Exception):
            raise read
        cache = unit_cache(config, cache_dir)
        with analysis_threads(), torch_threads(MATRIX_UNIT_TORCH_THREADS):
            result = analyze_read(read, cache, config)
        return UnitOutcome(result=result, cache_hit=cache.hits == 1, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - reported in this input's row; the scan goes on
        return UnitOutcome(error=describe_error(exc), seconds=time.perf_counter() - started)


GROUP_INPUTS = 64
"""At most this many inputs' units of one base matrix are analysed together in a matrix-major scan
(:func:`analyze_matrix_group`): their reads (factors, W₀ mapped) are held until the group is done."""


def analyze_matrix_group(
    base: str, units: list[MatrixUnit], config: AnalyzeConfig, cache_dir: str, reads: list[ReadJob | Exception],
    top_k_helpers: int = 0,
) -> list[UnitOutcome]:
    """Unit 2 for several inputs' units of one base matrix (a matrix-major scan's run): every unit as
    :func:`analyze_matrix` analyses it, the factors' products with the base factors stacked
    (:func:`~intrudim.analysis.jobs.analyze_reads`) on this process's torch threads (products as wide as the stack
    run at the machine's GEMM rate; the rest of each unit on one thread, as :func:`analyze_matrix`). A unit whose read
    failed, or whose analysis fails, gets its own error. ``top_k_helpers``: helper processes that take part of the
    stack's top-k (opt-in, the in-process engine's second core, :mod:`intrudim.analysis.top_k_pool`)."""
    started = time.perf_counter()
    good = [i for i, read in enumerate(reads) if not isinstance(read, Exception)]
    if len(good) < 2 or not batchable([reads[i] for i in good], config):  # type: ignore[misc]
        return [analyze_matrix(base, unit, config, cache_dir, read) for unit, read in zip(units, reads, strict=True)]
    outcomes: list[UnitOutcome | None] = [None] * len(units)
    for i, read in enumerate(reads):
        if isinstance(read, Exception):
            outcomes[i] = UnitOutcome(error=describe_error(read))
    if good:
        cache = unit_cache(config, cache_dir)
        with analysis_threads():
            results = analyze_reads([reads[i] for i in good], cache, config,  # type: ignore[misc]
                                    each=lambda: torch_threads(MATRIX_UNIT_TORCH_THREADS), top_k_helpers=top_k_helpers)
        seconds = (time.perf_counter() - started) / len(good)
        for i, result in zip(good, results, strict=True):
            if isinstance(result, Exception):
                outcomes[i] = UnitOutcome(error=describe_error(result), seconds=seconds)
            else:
                outcomes[i] = UnitOutcome(result=result, cache_hit=True, seconds=seconds)
    return [outcome for outcome in outcomes if outcome is not None]


def analyze_group_after(base_outcome: UnitOutcome, base: str, units: list[MatrixUnit], config: AnalyzeConfig,
                        cache_dir: str) -> list[UnitOutcome]:  # fmt: skip
    """:func:`analyze_matrix_group` of units of one base matrix (read here) once its base SVD unit is done: what a Ray
    task runs (Ray passes that unit's outcome: a dependency)."""
    if base_outcome.error is not None:
        return [UnitOutcome(error=base_outcome.error) for _ in units]
    if len(units) == 1:
        return [analyze_matrix(base, units[0], config, cache_dir)]
    return analyze_matrix_group(base, units, config, cache_dir,
                                [read_matrix_unit(base, unit, config, cache_dir) for unit in units])  # fmt: skip


def matrix_groups(units: list[MatrixUnit]) -> list[list[MatrixUnit]]:
    """Runs of consecutive units of one base matrix, at most :data:`GROUP_INPUTS` each (a matrix-major scan's inputs
    for that matrix; an adapter-major scan gives runs of one)."""
    groups: list[list[MatrixUnit]] = []
    for unit in units:
        if groups and groups[-1][0].base_unit == unit.base_unit and len(groups[-1]) < GROUP_INPUTS:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def write_input_analysis(
    base: str, unit: ReportUnit, outcomes: list[UnitOutcome], config: AnalyzeConfig
) -> UnitOutcome:
    """Unit 3: the analysis of one input from its matrix outcomes (in planned order), written as `analyze --out`
    writes it."""
    from intrudim.report.analysis_report import write_analysis_outputs

    started = time.perf_counter()
    try:
        hits = sum(1 for o in outcomes if o.cache_hit)
        result = AnalysisResult(
            base=base, tuned=unit.tuned, tuned_kind=unit.tuned_kind, config=config,
            matrices=[o.result for o in outcomes if o.result is not None],
            skipped=[{"name": name, "reason": reason} for name, reason in unit.skipped],
            seconds=sum(o.seconds for o in outcomes), cache_hits=hits, cache_misses=len(outcomes) - hits,
        )  # fmt: skip
        write_analysis_outputs(result, unit.out_dir, command=unit.command, figures_note=unit.figures_note)
        return UnitOutcome(analysis=result, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - e.g. the disk is full: this input's row says so
        return UnitOutcome(
            error=f"writing its analysis failed: {describe_error(exc)}", seconds=time.perf_counter() - started
        )


def forget_opened_inputs() -> None:
    """Close what :func:`opened_inputs` keeps open (a scan does at its end; files may change between scans)."""
    for cached in (opened_inputs, opened_base):
        cached.cache_clear()
    RECENT_FACTORS.clear()


def run_units_here(base: str, base_units: list[BaseUnit], matrix_units: list[MatrixUnit], config: AnalyzeConfig,
                   cache_dir: str, on_done) -> None:  # fmt: skip
    """The in-process engine: every base SVD unit, then every matrix unit, one after the other in this process;
    ``on_done(unit, outcome)`` after each. ``on_done`` returns the report units that became ready (with their
    inputs' matrix outcomes); they run at once."""
    base_outcomes: dict[BaseUnit, UnitOutcome] = {}
    try:
        for unit in base_units:
            base_outcomes[unit] = compute_base_svd(base, unit, config, cache_dir)
            on_done(unit, base_outcomes[unit])
        # The next matrix unit is read (W₀ hashed, its cache entry loaded) in a background thread while this one is
        # analysed, as `analyze` does (intrudim.analysis.prefetch); a unit whose base SVD failed reads nothing.
        def read(unit: MatrixUnit) -> ReadJob | Exception | None:
            if base_outcomes[unit.base_unit].error is not None:
                return None
            return read_matrix_unit(base, unit, config, cache_dir)

        group: list[tuple[MatrixUnit, ReadJob | Exception | None]] = []
        helpers = helper_processes()  # opt-in (INTRUDIM_TOPK_HELPERS=1): a helper process takes half of each stack's top-k

        def finish_group() -> None:
            units = [unit for unit, _ in group]
            base_outcome = base_outcomes[units[0].base_unit]
            if base_outcome.error is not None:
                outcomes = [UnitOutcome(error=base_outcome.error) for _ in units]
            elif len(units) == 1:
                outcomes = [analyze_matrix(base, units[0], config, cache_dir, group[0][1])]
            else:
                outcomes = analyze_matrix_group(base, units, config, cache_dir, [r for _, r in group],  # type: ignore[misc]
                                                top_k_helpers=helpers)  # fmt: skip
            group.clear()
            for unit, outcome in zip(units, outcomes, strict=True):
                for report, report_outcomes in on_done(unit, outcome) or ():
                    on_done(report, write_input_analysis(base, report, report_outcomes, config))

        # A matrix-major scan lists every input's unit of one base matrix in a row: up to GROUP_INPUTS of them are
        # analysed together (their products with the base factors stacked); an adapter-major scan, one by one.
        for unit, unit_read in zip(matrix_units, read_ahead(matrix_units, read), strict=True):
            if group and (group[0][0].base_unit != unit.base_unit or len(group) >= GROUP_INPUTS):
                finish_group()
            group.append((unit, unit_read))
            del unit_read
        if group:
            finish_group()
    finally:
        forget_opened_inputs()
