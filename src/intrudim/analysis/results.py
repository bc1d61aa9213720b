"""Results of `analyze`: one :class:`MatrixResult` per matrix, summed in an :class:`AnalysisResult` (Sec. 4)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from intrudim.analysis.config import AnalyzeConfig

HALF_CACHE = ("float16", "bfloat16")


@dataclass
class MatrixResult:
    """Intruder analysis of one weight matrix. Ranks are 1-based (1 = largest singular value)."""

    name: str
    shape: tuple[int, int]  # (out, in), as analysed
    layer: int | None
    module_type: str
    transposed: bool  # stored as Conv1D (in, out) and transposed for analysis
    intruders: int
    intruder_ranks: list[int]
    max_abs_cos: list[float]  # k values, rank order
    singular_values: list[float]  # top-k σ of W_t
    base_singular_values: list[float]  # top-k σ of W₀
    effective_rank_delta: float | None
    intruder_energy_share: float  # Σ_{j∈I} σ_j² / ‖W_t‖_F²
    largest_intruder_rank: int | None
    largest_intruder_sigma_ratio: float | None  # σ of the highest-ranked intruder / σ₁(W₀)
    epsilon_sweep: dict[float, int]
    k_sweep: dict[str, int] | None = None
    lora_rank: int | None = None
    update_sigma1: float | None = None  # σ₁(ΔW)
    intruder_pressure: float | None = None  # σ₁(ΔW) / σ_k(W₀) (beyond the paper; Sec. 5's toy model)
    update_alignment: float | None = None  # ‖U₀[:, :k]ᵀ u₁(ΔW)‖: 0 = the update's top direction is new
    redecided: bool = False  # half-precision cache: a decision lay within the rounding's bound, re-decided in float64
    similarity: list[list[float]] | None = field(default=None, repr=False)  # (k, n_base) |cos|

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MatrixResult:
        """The result :meth:`to_json` wrote, value for value (JSON floats round-trip exactly)."""
        fields = dict(data)
        fields["shape"] = tuple(fields["shape"])
        fields["epsilon_sweep"] = {float(eps): n for eps, n in fields["epsilon_sweep"].items()}
        return cls(**fields)

    def to_json(self, include_similarity: bool = False) -> dict[str, Any]:
        """A JSON-ready dict, every list and dict a fresh copy. Built field by field rather than with
        ``dataclasses.asdict``, which deep-copies the (k × n_base) similarity before it is dropped: ~5 ms per
        matrix of a 7B model, a tenth of a matrix-major scan's time."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "similarity":
                if include_similarity:
                    data["similarity"] = None if value is None else [list(row) for row in value]
                continue
            if isinstance(value, dict):
                value = dict(value)
            elif isinstance(value, (list, tuple)):  # shape (a tuple) is written as a list
                value = list(value)
            data[item.name] = value
        data["epsilon_sweep"] = {str(eps): n for eps, n in self.epsilon_sweep.items()}
        return data


@dataclass
class AnalysisResult:
    """Intruder dimensions of a tuned model against its base (summed over matrices, Sec. 4)."""

    base: str
    tuned: str
    tuned_kind: str  # "lora" or "dense"
    config: AnalyzeConfig
    matrices: list[MatrixResult]
    skipped: list[dict[str, str]]
    seconds: float
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def k(self) -> int:
        return self.config.k

    @property
    def epsilon(self) -> float:
        return self.config.epsilon

    @property
    def total_intruders(self) -> int:
        return sum(m.intruders for m in self.matrices)

    @property
    def matrices_redecided(self) -> int:
        """Matrices whose half-precision cached factors left a decision within their error bound, re-decided with a
        float64 SVD of the base matrix (always 0 for a float32 or float64 cache, or without one)."""
        return sum(1 for m in self.matrices if m.redecided)

    def epsilon_sweep(self) -> dict[float, int]:
        totals = {float(eps): 0 for eps in self.config.epsilons}
        for matrix in self.matrices:
            for eps, n in matrix.epsilon_sweep.items():
                totals[eps] = totals.get(eps, 0) + n
        return totals

    def k_sweep(self) -> dict[str, int] | None:
        if not self.config.k_sweep:
            return None
        totals: dict[str, int] = {}
        for matrix in self.matrices:
            for label, n in (matrix.k_sweep or {}).items():
                totals[label] = totals.get(label, 0) + n
        return totals

    def by_layer(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for m in self.matrices:
            label = "-" if m.layer is None else str(m.layer)
            totals[label] = totals.get(label, 0) + m.intruders
        return totals

    def by_module_type(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for m in self.matrices:
            totals[m.module_type] = totals.get(m.module_type, 0) + m.intruders
        return totals

    def to_json(self, include_similarity: bool = False) -> dict[str, Any]:
        shares = [m.intruder_energy_share for m in self.matrices]
        return {
            "k": self.config.k,
            "epsilon": self.config.epsilon,
            "total_intruders": self.total_intruders,
            "matrices": [m.to_json(include_similarity) for m in self.matrices],
            "base": self.base,
            "tuned": self.tuned,
            "tuned_kind": self.tuned_kind,
            "matrices_analysed": len(self.matrices),
            "matrices_with_intruders": sum(1 for m in self.matrices if m.intruders),
            "intruder_energy_share_sum": sum(shares),
            "intruder_energy_share_mean": (sum(shares) / len(shares)) if shares else 0.0,
            "epsilon_sweep": {str(eps): n for eps, n in self.epsilon_sweep().items()},
            "k_sweep": self.k_sweep(),
            "by_layer": self.by_layer(),
            "by_module_type": self.by_module_type(),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 4),
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "matrices_redecided": self.matrices_redecided,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
            "definitions": {
                "intruder": "tuned left singular vector j among the top k with max_i |cos(u_j, u_i^base)| < epsilon, "
                "max over all base left singular vectors (thin U of W0)",
                "intruder_ranks": "1-based: 1 is the largest singular value of W_tuned",
                "orientation": "W as nn.Linear (out, in); GPT-2 Conv1D weights are transposed",
            },
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                "name", "layer", "module_type", "out", "in", "intruders", "intruder_ranks", "min_max_abs_cos",
                "largest_intruder_rank", "largest_intruder_sigma_ratio", "intruder_energy_share",
                "effective_rank_delta", "sigma1_tuned", "sigma1_base", "lora_rank", "update_sigma1",
                "intruder_pressure", "update_alignment",
            ]
        )  # fmt: skip
        for m in self.matrices:
            writer.writerow(
                [
                    m.name, "" if m.layer is None else m.layer, m.module_type, m.shape[0], m.shape[1], m.intruders,
                    ";".join(map(str, m.intruder_ranks)), f"{min(m.max_abs_cos):.6f}",
                    m.largest_intruder_rank or "", "" if m.largest_intruder_sigma_ratio is None
                    else f"{m.largest_intruder_sigma_ratio:.6f}", f"{m.intruder_energy_share:.6f}",
                    "" if m.effective_rank_delta is None else f"{m.effective_rank_delta:.4f}",
                    f"{m.singular_values[0]:.6f}", f"{m.base_singular_values[0]:.6f}", m.lora_rank or "",
                    *("" if v is None else f"{v:.6f}" for v in (m.update_sigma1, m.intruder_pressure, m.update_alignment)),
                ]
            )  # fmt: skip
        return out.getvalue()

    def summary_lines(self) -> list[str]:
        """The result in a few lines, one fact each (the CLI prints them wrapped between phrases): the count, the
        intruders' energy as a percentage with its definition, what was analysed (a path after its label), the
        time and the base SVD cache."""
        n = len(self.matrices)
        with_intruders = sum(1 for m in self.matrices if m.intruders)
        shares = [m.intruder_energy_share for m in self.matrices]
        energy = 100 * sum(shares) / n if n else 0.0
        redecided = f", {self.matrices_redecided} re-decided in float64" if self.config.cache_dtype in HALF_CACHE else ""
        return [
            f"{self.total_intruders} intruder dimensions (k={self.k}, ε={self.epsilon}) in {with_intruders} of "
            f"{n} matrices",
            f"energy: intruders carry {energy:.3g} % of ‖W_t‖²_F (mean over matrices)",
            f"tuned ({self.tuned_kind}): {self.tuned}",
            f"base: {self.base}",
            f"{self.seconds:.2f} s; base SVD cache: {self.cache_hits} hits, {self.cache_misses} computed{redecided}",
        ]


def write_json(result: AnalysisResult, path: str | Path) -> Path:
    from intrudim.fileio import write_text_atomic

    return write_text_atomic(path, json.dumps(result.to_json(), indent=2) + "\n")

