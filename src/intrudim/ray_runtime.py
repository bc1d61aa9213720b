"""Ray for intrudim's distributed work (`scan --ray`, `sweep --ray`): importing it with a clear message when it is
missing, failing fast on an unreachable --ray-address, and a runtime that is joined or started and stopped.
The only modules that import ``ray`` are this one's callers' engines; intrudim works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from intrudim.errors import IntrudimError

INSTALL_ADVICE = "Install it with: pip install 'intrudim[ray]'"
POLL_SECONDS = 0.2  # how often finished units are collected (and progress drawn)


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable --ray-address (HOST:PORT), or None."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return (
            f"--ray-address must be HOST:PORT (the head node's GCS address that `ray start --head` prints, "
            f"e.g. 10.0.0.5:6379); got {address!r}."
        )
    return None


def import_ray() -> Any:
    """``ray``, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise IntrudimError(
            f"--ray and --ray-address run the work on Ray, which is not installed here. {INSTALL_ADVICE} "
            f"(or run it in-process: leave out --ray and --ray-address)."
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
def ray_runtime(address: str | None, *, cpus: int | None = None, object_store_mb: int = 200) -> Iterator[Any]:
    """Ray for a scan or a sweep: joined (``address`` "HOST:PORT"), started locally with ``cpus`` CPUs (default:
    all cores; stopped again at the end), or the caller's own when this process is already connected."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is not None:
        check_reachable(address)
        host = address.rpartition(":")[0]
        extra = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        try:
            ray.init(address=address, **quiet, **extra)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise IntrudimError(f"Cannot join the Ray cluster at --ray-address {address}: {exc}") from None
    else:
        ray.init(
            num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False,
            object_store_memory=object_store_mb * 1024 * 1024, **quiet,
        )  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()
