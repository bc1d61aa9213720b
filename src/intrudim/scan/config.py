"""What `scan` does: :class:`ScanConfig` (the analysis settings shared with `analyze`, and where units run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from intrudim.analysis.config import AnalyzeConfig
from intrudim.errors import InvalidConfigError
from intrudim.ray_runtime import address_problem
from intrudim.spectral.prediction import DEFAULT_PRESSURE_THRESHOLD

PRESSURE_THRESHOLD = DEFAULT_PRESSURE_THRESHOLD
"""A matrix is *predicted* intruder-prone when σ₁(ΔW)/σ_k(W₀) > 0.85 (beyond the paper; Sec. 5's toy model,
refitted over training runs: :data:`intrudim.spectral.prediction.DEFAULT_PRESSURE_THRESHOLD`)."""

SCAN_FIGURES = ("auto", "all", "none")
"""Which inputs' reports get figures: ``auto`` every input's up to :data:`FIGURES_AUTO_MAX` inputs, none above."""
FIGURES_AUTO_MAX = 16
"""``figures="auto"`` draws each input's figures only in scans of at most this many inputs: nine figures cost
~8 s per input on 2 cores, 89 % of a warm scan of small adapters (docs/scan.md, "Figures"); a scan of hundreds of
adapters is read in its leaderboard, and `analyze --out` draws one input's figures."""

SCAN_ORDERS = ("auto", "matrix", "adapter")
"""``auto``: matrix-major from two inputs on (:attr:`ScanConfig.order`)."""

DEFAULT_MAX_RETRIES = 3
"""Ray re-runs a unit whose worker or node died this many times (finished units are never re-run)."""


@dataclass(frozen=True)
class ScanConfig:
    """A scan: one base, many tuned models, each analysed as `analyze` would (``analysis``), in-process or on Ray.

    The work runs as units (base SVDs, then one per input and matrix, then one report per input) over one shared
    base SVD cache; every engine writes the same numbers. A frozen dataclass, validated when built.

    Attributes:
        analysis: What each input is analysed for (default: ``AnalyzeConfig()``, the paper's k = 10, ε = 0.5;
            Sec. 4).
        engine: ``"local"`` (default) runs the units in this process, one after the other; ``"ray"`` runs them as
            Ray tasks, on a local runtime started for the scan (``ray_address=None``, ``ray_cpus`` workers) or on
            an existing cluster (``ray_address="HOST:PORT"``).
        ray_address: The ``HOST:PORT`` of an existing Ray cluster's GCS (default None: a local runtime). Needs
            ``engine="ray"``.
        ray_cpus: Workers of the local Ray runtime (default None: every core). Not with ``ray_address``.
        ray_object_store_mb: Object store of the local Ray runtime, in MB (default 200, ≥ 50): the base factors
            travel through the cache directory, not the object store.
        max_retries: How many times Ray re-runs a unit whose worker or node died (default 3; finished units are
            never re-run).
        pressure_threshold: A matrix is *predicted* intruder-prone when its intruder pressure σ₁(ΔW)/σ_k(W₀) is
            above this (default 0.85; beyond the paper: Sec. 5's toy model, refitted over training runs).
        resume: Skip the inputs an earlier scan into the same folder has finished (default False).
        order: The order of the matrix units: ``"matrix"`` takes each base matrix in turn and analyses every
            input's factors for it against its cached base SVD, read once for all of them; ``"adapter"`` finishes
            one input before the next (each reads every base factor again). ``"auto"`` (default): matrix from two
            inputs on. The numbers are the same in either order.
        memory_budget_mb: Matrix-major scans the inputs in batches whose results (held until each input's last
            matrix is done) fit this many MB; every base factor is read once per batch. Default None: a quarter of
            the memory available when the scan starts.
        figures: ``"all"``: every input's report.html has the figures `analyze --out` draws; ``"none"``: tables,
            verdict, JSON and CSV only (the report gives the command that draws them); ``"auto"`` (default): all
            up to :data:`FIGURES_AUTO_MAX` inputs, none above.
    """

    analysis: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    engine: str = "local"
    ray_address: str | None = None
    ray_cpus: int | None = None  # local runtime only: parallel workers (default: all cores)
    ray_object_store_mb: int = 200  # local runtime only: the base factors travel through the cache directory
    max_retries: int = DEFAULT_MAX_RETRIES
    pressure_threshold: float = PRESSURE_THRESHOLD
    resume: bool = False
    order: str = "auto"
    memory_budget_mb: int | None = None
    figures: str = "auto"

    def draws_figures(self, inputs: int) -> bool:
        """Whether each input's report gets figures in a scan of ``inputs`` inputs."""
        return self.figures == "all" or (self.figures == "auto" and inputs <= FIGURES_AUTO_MAX)

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise InvalidConfigError(f"engine must be 'local' or 'ray'; got {self.engine!r}.")
        if self.ray_address is not None and self.engine != "ray":
            raise InvalidConfigError("ray_address needs engine='ray' (the CLI's --ray-address sets both).")
        if self.ray_address is not None and (problem := address_problem(self.ray_address)):
            raise InvalidConfigError(problem)
        if self.ray_cpus is not None and (isinstance(self.ray_cpus, bool) or self.ray_cpus < 1):
            raise InvalidConfigError(
                f"ray_cpus (--workers) must be a positive integer; got {self.ray_cpus!r}."
            )
        if self.ray_cpus is not None and self.ray_address is not None:
            raise InvalidConfigError(
                "--workers sizes the local Ray runtime of --ray; a cluster joined with --ray-address has its own CPUs."
            )
        if self.ray_object_store_mb < 50:
            raise InvalidConfigError(
                f"ray_object_store_mb must be ≥ 50 (Ray's minimum); got {self.ray_object_store_mb}."
            )
        if self.memory_budget_mb is not None and (isinstance(self.memory_budget_mb, bool) or self.memory_budget_mb < 1):
            raise InvalidConfigError(f"memory_budget_mb must be a positive number of MB; got {self.memory_budget_mb!r}.")
        if self.figures not in SCAN_FIGURES:
            raise InvalidConfigError(f"figures must be one of {', '.join(SCAN_FIGURES)}; got {self.figures!r}.")
        if self.order not in SCAN_ORDERS:
            raise InvalidConfigError(f"order must be one of {', '.join(SCAN_ORDERS)}; got {self.order!r}.")
        if self.max_retries < 0:
            raise InvalidConfigError(f"max_retries must be ≥ 0; got {self.max_retries}.")
        if not self.pressure_threshold > 0:
            raise InvalidConfigError(f"pressure_threshold must be > 0; got {self.pressure_threshold}.")
