"""Running a scan's units as Ray tasks: a local runtime started for the scan (``--ray``) or an existing cluster
(``--ray-address HOST:PORT``), both through :mod:`intrudim.ray_runtime`; intrudim works without Ray.

Each unit (:mod:`intrudim.scan.units`) is one task with ``max_retries`` (a matrix-major scan's matrix units go as
(base matrix, run of inputs) tasks, :func:`~intrudim.scan.units.matrix_groups`, their products stacked): when a worker process or a whole node
dies, Ray runs the unit again elsewhere; a finished unit's outcome (a few kB) is already held by this driver,
so no finished result is lost. A matrix unit takes its base SVD unit's outcome as an argument, so it starts
as soon as that one base matrix is in the cache, not after every base SVD.

The base factors travel through the shared cache directory, not the object store (docs/scan.md says why).
"""

from __future__ import annotations

from typing import Any

from intrudim.analysis.config import AnalyzeConfig
from intrudim.ray_runtime import POLL_SECONDS, ray_runtime
from intrudim.scan.config import ScanConfig
from intrudim.scan.units import (
    BaseUnit,
    MatrixUnit,
    ReportUnit,
    UnitOutcome,
    analyze_group_after,
    compute_base_svd,
    describe_error,
    matrix_groups,
    write_input_analysis,
)


def run_units_on_ray(base: str, base_units: list[BaseUnit], matrix_units: list[MatrixUnit], config: ScanConfig,
                     cache_dir: str, on_done) -> None:  # fmt: skip
    """Every unit as a Ray task (one CPU each); ``on_done(unit, outcome)`` in this process as each finishes; the
    report units it returns are submitted as tasks too (OUT must be visible to the workers, as the inputs are)."""
    analysis: AnalyzeConfig = config.analysis
    with ray_runtime(config.ray_address, cpus=config.ray_cpus, object_store_mb=config.ray_object_store_mb) as ray:
        options = {"num_cpus": 1, "max_retries": config.max_retries}
        base_task = ray.remote(**options)(compute_base_svd)
        group_task = ray.remote(**options)(analyze_group_after)
        report_task = ray.remote(**options)(write_input_analysis)
        pending: dict[Any, BaseUnit | MatrixUnit | ReportUnit] = {}
        base_refs = {}
        for unit in base_units:
            base_refs[unit] = base_task.remote(base, unit, analysis, cache_dir)
            pending[base_refs[unit]] = unit
        groups: dict[Any, list[MatrixUnit]] = {}
        for group in matrix_groups(matrix_units):
            groups[group_task.remote(base_refs[group[0].base_unit], base, group, analysis, cache_dir)] = group
        while pending or groups:
            ready, _ = ray.wait([*pending, *groups], num_returns=len(pending) + len(groups), timeout=POLL_SECONDS)
            for ref in ready:
                group = ref in groups
                finished = groups.pop(ref) if group else [pending.pop(ref)]
                try:
                    outcomes = ray.get(ref) if group else [ray.get(ref)]
                except Exception as exc:  # noqa: BLE001 - a unit whose retries ran out (e.g. every node lost)
                    failed = UnitOutcome(error=f"the unit failed on Ray after {config.max_retries} retries: "
                                         f"{describe_error(exc)}")  # fmt: skip
                    outcomes = [failed for _ in finished]
                for unit, unit_outcome in zip(finished, outcomes, strict=True):
                    for report, report_outcomes in on_done(unit, unit_outcome) or ():
                        pending[report_task.remote(base, report, report_outcomes, analysis)] = report
