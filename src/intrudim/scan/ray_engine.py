"""Running a scan's units as Ray tasks: a local runtime started for the scan (``--ray``) or an existing cluster
(``--ray-address HOST:PORT``). The only module of intrudim that imports ``ray``; intrudim works without it.

Each unit (:mod:`intrudim.scan.units`) is one task with ``max_retries``: when a worker process or a whole node
dies, Ray runs the unit again elsewhere; a finished unit's outcome (a few kB) is already held by this driver,
so no finished result is lost. A matrix unit takes its base SVD unit's outcome as an argument, so it starts
as soon as that one base matrix is in the cache, not after every base SVD.

The base factors travel through the shared cache directory, not the object store (docs/scan.md says why).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

from intrudim.analysis.config import AnalyzeConfig
from intrudim.errors import IntrudimError
from intrudim.scan.config import ScanConfig
from intrudim.scan.units import (
    BaseUnit,
    MatrixUnit,
    ReportUnit,
    UnitOutcome,
    analyze_matrix_after,
    compute_base_svd,
    describe_error,
    write_input_analysis,
)

INSTALL_ADVICE = "Install it with: pip install 'intrudim[ray]'"
POLL_SECONDS = 0.2  # how often finished units are collected (and progress drawn)


def import_ray() -> Any:
    """``ray``, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise IntrudimError(
            f"--ray and --ray-address run the scan on Ray, which is not installed here. {INSTALL_ADVICE} "
            f"(or run the scan in-process: leave out --ray)."
        ) from None
    return ray


HTTP2_PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)  # + empty SETTINGS
PROBE_SECONDS = 5.0


def check_reachable(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast, with a message, when no Ray head answers at ``address`` (``ray.init`` itself retries for
    minutes). Ray's GCS speaks gRPC, i.e. HTTP/2: open a TCP connection, send HTTP/2's client preface and expect
    the server's SETTINGS frame back, all within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    advice = (
        f"Start a head node there with `ray start --head --port {port}` (it prints the address to use), or check "
        f"the host, the port and any firewall between this machine and it."
    )
    try:
        connection = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise IntrudimError(
            f"Cannot reach a Ray cluster at --ray-address {address}: {exc.strerror or exc}. {advice}"
        ) from None
    with connection:
        try:
            connection.sendall(HTTP2_PREFACE)
            reply = connection.recv(
                9
            )  # a frame header: length (3 bytes), type (0x04 = SETTINGS), flags, stream
        except OSError:  # a timeout, or the connection reset: not a gRPC server
            reply = b""
    if len(reply) < 4 or reply[3] != 0x04:
        raise IntrudimError(
            f"Something listens at --ray-address {address}, but it is not a Ray head node (no gRPC answer within "
            f"{timeout:.0f} s). {advice}"
        )


@contextlib.contextmanager
def ray_runtime(config: ScanConfig) -> Iterator[Any]:
    """Ray for the scan: joined (``ray_address``), started locally (stopped again at the end), or the caller's
    own when this process is already connected."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.ray_address is not None:
        check_reachable(config.ray_address)
        host = config.ray_address.rpartition(":")[0]
        extra = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        try:
            ray.init(address=config.ray_address, **quiet, **extra)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise IntrudimError(
                f"Cannot join the Ray cluster at --ray-address {config.ray_address}: {exc}"
            ) from None
    else:
        import os

        ray.init(
            num_cpus=config.ray_cpus or os.cpu_count() or 1, include_dashboard=False,
            object_store_memory=config.ray_object_store_mb * 1024 * 1024, **quiet,
        )  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


def run_units_on_ray(base: str, base_units: list[BaseUnit], matrix_units: list[MatrixUnit], config: ScanConfig,
                     cache_dir: str, on_done) -> None:  # fmt: skip
    """Every unit as a Ray task (one CPU each); ``on_done(unit, outcome)`` in this process as each finishes; the
    report units it returns are submitted as tasks too (OUT must be visible to the workers, as the inputs are)."""
    analysis: AnalyzeConfig = config.analysis
    with ray_runtime(config) as ray:
        options = {"num_cpus": 1, "max_retries": config.max_retries}
        base_task = ray.remote(**options)(compute_base_svd)
        matrix_task = ray.remote(**options)(analyze_matrix_after)
        report_task = ray.remote(**options)(write_input_analysis)
        pending: dict[Any, BaseUnit | MatrixUnit | ReportUnit] = {}
        base_refs = {}
        for unit in base_units:
            base_refs[unit] = base_task.remote(base, unit, analysis, cache_dir)
            pending[base_refs[unit]] = unit
        for unit in matrix_units:
            pending[matrix_task.remote(base_refs[unit.base_unit], base, unit, analysis, cache_dir)] = unit
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
            for ref in ready:
                unit = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a unit whose retries ran out (e.g. every node lost)
                    outcome = UnitOutcome(error=f"the unit failed on Ray after {config.max_retries} retries: "
                                          f"{describe_error(exc)}")  # fmt: skip
                for report, outcomes in on_done(unit, outcome) or ():
                    pending[report_task.remote(base, report, outcomes, analysis)] = report
