"""`intrudim analyze BASE TUNED`: intruder dimensions per matrix (Sec. 3–4, Figs. 1–6, 11, 13).

For each analysed matrix W₀ (base) and W_t (tuned), the top-k left singular vectors of W_t are compared
with *all* left singular vectors of W₀ (thin U₀); vector j is an intruder iff its max |cos| < ε.
LoRA adapters are analysed from their factors (structured top-k, :mod:`intrudim.spectral.structured`);
dense tuned models through a top-k Lanczos SVD. Base SVDs come from the on-disk cache.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from intrudim.errors import IncompatibleWeightsError, IntrudimError, InvalidConfigError, NonFiniteWeightsError
from intrudim.spectral.intruders import (
    EPSILON_SWEEP,
    K_SWEEP_FRACTIONS,
    count_intruders,
    epsilon_sweep,
    intruder_energy_share,
    intruder_ranks,
    max_abs_cosine,
)
from intrudim.spectral.structured import core_full_spectrum, core_top_k, lora_core
from intrudim.spectral.svd import (
    effective_rank,
    low_rank_singular_values,
    singular_values,
    thin_svd,
    top_k_svd,
)
from intrudim.weights.matching import KeyMatcher
from intrudim.weights.peft_adapter import EMBEDDING_LORA_ADVICE, LoraAdapter, is_adapter_dir
from intrudim.weights.selection import MatrixSelection, is_conv1d, layer_index, module_type
from intrudim.weights.sources import EMBEDDED_MODELS, WeightSource, open_weights
from intrudim.weights.svd_cache import BaseSVDCache, default_cache_dir

_CACHE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class AnalyzeConfig:
    """What `analyze` measures. Defaults are the paper's: k = 10, ε = 0.5 (Sec. 4)."""

    k: int = 10
    epsilon: float = 0.5
    modules: str | None = None  # regex on parameter names; default: all 2-D linear weights in the blocks
    include_embeddings: bool = False
    include_heads: bool = False
    epsilons: tuple[float, ...] = EPSILON_SWEEP  # Fig. 5
    k_sweep: bool = False  # Fig. 11: needs the full tuned spectrum (dense SVD of the small core / matrix)
    k_fractions: tuple[float, ...] = K_SWEEP_FRACTIONS
    similarity_size: int = 50  # base vectors kept per matrix for the Fig. 1/3 heatmap
    effective_rank: bool = True  # Fig. 6 (needs all singular values of ΔW; cheap for LoRA)
    method: str = "auto"  # "auto"/"structured": LoRA from factors; "dense": merge and SVD (reference)
    device: str = "cpu"
    cache_dtype: str = "float32"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidConfigError(f"k must be a positive integer (the number of top tuned vectors); got {self.k!r}.")
        if not (0.0 < float(self.epsilon) <= 1.0):
            raise InvalidConfigError(
                f"epsilon must be in (0, 1] (a threshold on |cos|); got {self.epsilon!r}. The paper uses 0.5."
            )
        for eps in self.epsilons:
            if not (0.0 < float(eps) <= 1.0):
                raise InvalidConfigError(f"every value of epsilons must be in (0, 1]; got {eps!r}.")
        for fraction in self.k_fractions:
            if not (0.0 < float(fraction) <= 1.0):
                raise InvalidConfigError(f"every k fraction must be in (0, 1]; got {fraction!r}.")
        if self.similarity_size < 1:
            raise InvalidConfigError(f"similarity_size must be ≥ 1; got {self.similarity_size!r}.")
        if self.method not in ("auto", "structured", "dense"):
            raise InvalidConfigError(f"method must be 'auto', 'structured' or 'dense'; got {self.method!r}.")
        if self.cache_dtype not in _CACHE_DTYPES:
            raise InvalidConfigError(f"cache_dtype must be 'float32' or 'float64'; got {self.cache_dtype!r}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InvalidConfigError(f"device must be 'cpu' or 'cuda[:N]'; got {self.device!r}.")
        if self.modules is not None:
            import re

            try:
                re.compile(self.modules)
            except re.error as exc:
                raise InvalidConfigError(f"modules is not a valid regular expression ({self.modules!r}): {exc}.") from None

    @property
    def selection(self) -> MatrixSelection:
        return MatrixSelection(self.modules, self.include_embeddings, self.include_heads)


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
    similarity: list[list[float]] | None = field(default=None, repr=False)  # (k, n_base) |cos|

    def to_json(self, include_similarity: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["epsilon_sweep"] = {str(eps): n for eps, n in self.epsilon_sweep.items()}
        if not include_similarity:
            data.pop("similarity")
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
                "effective_rank_delta", "sigma1_tuned", "sigma1_base", "lora_rank",
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
                ]
            )  # fmt: skip
        return out.getvalue()

    def summary_lines(self) -> list[str]:
        n = len(self.matrices)
        with_intruders = sum(1 for m in self.matrices if m.intruders)
        return [
            f"{self.total_intruders} intruder dimensions (k={self.k}, ε={self.epsilon}) in {with_intruders} of "
            f"{n} matrices",
            f"analysed {self.tuned_kind} '{self.tuned}' against '{self.base}' in {self.seconds:.2f} s "
            f"(base SVD cache: {self.cache_hits} hits, {self.cache_misses} computed)",
        ]


# --------------------------------------------------------------------------------------------------------------
# Resolving inputs


def resolve_tuned_path(tuned: str | Path) -> Path:
    """A training run directory (``RUN_DIR/final`` + metrics) resolves to its final adapter or model."""
    path = Path(tuned).expanduser()
    if path.is_dir() and (path / "final").is_dir() and ((path / "metrics.jsonl").exists() or (path / "config.json").exists()):
        if not (path / "model.safetensors").exists() and not (path / "adapter_config.json").exists():
            return path / "final"
    return path


def _check_finite(W: torch.Tensor, name: str, where: str) -> None:
    # One float64 reduction: NaN/Inf propagate into the sum, and finite float32/bf16 values cannot overflow it.
    if not bool(torch.isfinite(W.sum(dtype=torch.float64))):
        bad = int((~torch.isfinite(W)).sum())
        raise NonFiniteWeightsError(
            f"Matrix '{name}' in {where} holds {bad} NaN/Inf value(s). The checkpoint is damaged or training "
            f"diverged; analyse an earlier checkpoint."
        )


def _oriented(W: torch.Tensor, transpose: bool) -> torch.Tensor:
    if W.ndim != 2:
        raise IncompatibleWeightsError(f"Expected a 2-D weight matrix, found shape {tuple(W.shape)}.")
    return W.T.contiguous() if transpose else W


@dataclass(frozen=True)
class _Job:
    base_key: str
    shape: tuple[int, int]  # oriented (out, in)
    transpose: bool
    tuned_key: str | None = None  # dense tuned
    module: str | None = None  # adapter module


def _plan_adapter_jobs(
    base: WeightSource, adapter: LoraAdapter, selection: MatrixSelection
) -> tuple[list[_Job], list[dict[str, str]]]:
    matcher = KeyMatcher(base.keys())
    jobs: list[_Job] = []
    skipped: list[dict[str, str]] = []
    for module in sorted(adapter.modules):
        base_key = matcher.base_key(module + ".weight")
        if base_key is None:
            raise IncompatibleWeightsError(
                f"Adapter '{adapter.path}' modifies '{module}', but BASE '{base.path}' has no weight "
                f"'{module}.weight' (nor one differing only by a wrapper prefix). Is this adapter for another "
                f"model? Its adapter_config.json names base '{adapter.base_model_name}'."
            )
        stored = base.shape(base_key)
        if len(stored) != 2:
            skipped.append({"name": base_key, "reason": f"not a 2-D matrix (shape {list(stored)})"})
            continue
        transpose = is_conv1d(base_key, base.model_type) or adapter.fan_in_fan_out
        shape = (stored[1], stored[0]) if transpose else (stored[0], stored[1])
        factors_shape = adapter.factor_shape(module)
        if factors_shape != shape:
            raise IncompatibleWeightsError(
                f"Adapter '{adapter.path}' does not fit BASE '{base.path}': module '{module}' has LoRA factors for "
                f"a ({factors_shape[0]}, {factors_shape[1]}) matrix (out, in), but base weight '{base_key}' is "
                f"{tuple(stored)}{' (Conv1D, analysed transposed)' if transpose else ''}. Check that BASE is "
                f"the model the adapter was trained on."
            )
        if not selection.selects(base_key, stored):
            skipped.append({"name": base_key, "reason": "not selected (embeddings/heads need --include-*, or --modules)"})
            continue
        jobs.append(_Job(base_key=base_key, shape=shape, transpose=transpose, module=module))
    skipped += [{"name": module, "reason": EMBEDDING_LORA_ADVICE} for module in adapter.embedding_modules]
    jobs.sort(key=lambda job: _natural_key(job.base_key))
    return jobs, skipped


def _plan_dense_jobs(base: WeightSource, tuned: WeightSource, selection: MatrixSelection) -> list[_Job]:
    if base.model_type and tuned.model_type and base.model_type != tuned.model_type:
        raise IncompatibleWeightsError(
            f"TUNED '{tuned.path}' is a '{tuned.model_type}' model but BASE '{base.path}' is '{base.model_type}'. "
            f"Compare a fine-tuned model with the base model it was fine-tuned from."
        )
    matcher = KeyMatcher(tuned.keys())
    jobs: list[_Job] = []
    for base_key in sorted(base.keys(), key=_natural_key):
        stored = base.shape(base_key)
        if not selection.selects(base_key, stored):
            continue
        tuned_key = matcher.base_key(base_key)
        if tuned_key is None:
            raise IncompatibleWeightsError(
                f"TUNED '{tuned.path}' has no weight matching base weight '{base_key}' {tuple(stored)}. The two "
                f"models have different architectures; compare a fine-tuned model with its own base."
            )
        tuned_shape = tuned.shape(tuned_key)
        if tuple(tuned_shape) != tuple(stored):
            raise IncompatibleWeightsError(
                f"Shape mismatch for '{base_key}': BASE '{base.path}' has {tuple(stored)}, TUNED '{tuned.path}' "
                f"has {tuple(tuned_shape)} (as '{tuned_key}'). The models have different architectures."
            )
        transpose = is_conv1d(base_key, base.model_type)
        shape = (stored[1], stored[0]) if transpose else (stored[0], stored[1])
        jobs.append(_Job(base_key=base_key, shape=shape, transpose=transpose, tuned_key=tuned_key))
    return jobs


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in name.split(".")]


# --------------------------------------------------------------------------------------------------------------
# Per-matrix analysis


def _k_sweep_labels(p: int, k: int, fractions: tuple[float, ...]) -> list[tuple[str, int]]:
    labels = [(f"k={k}", min(k, p))]
    labels += [(f"{round(f * 100)}%", max(1, round(f * p))) for f in fractions]
    return labels


def _finish(
    job: _Job,
    config: AnalyzeConfig,
    S_t: torch.Tensor,
    max_cos: torch.Tensor,
    S0: torch.Tensor,
    frobenius_sq: float,
    delta_sigma: torch.Tensor | None,
    similarity: torch.Tensor,
    max_cos_all: torch.Tensor | None,
    lora_rank: int | None,
) -> MatrixResult:
    ranks = intruder_ranks(max_cos, config.epsilon)
    largest = ranks[0] if ranks else None
    k_sweep_counts = None
    if max_cos_all is not None:
        p = int(S0.shape[0])
        k_sweep_counts = {
            label: count_intruders(max_cos_all, config.epsilon, K)
            for label, K in _k_sweep_labels(p, config.k, config.k_fractions)
        }
    return MatrixResult(
        name=job.base_key,
        shape=job.shape,
        layer=layer_index(job.base_key),
        module_type=module_type(job.base_key),
        transposed=job.transpose,
        intruders=len(ranks),
        intruder_ranks=ranks,
        max_abs_cos=[float(x) for x in max_cos],
        singular_values=[float(x) for x in S_t],
        base_singular_values=[float(x) for x in S0[: config.k]],
        effective_rank_delta=None if delta_sigma is None else effective_rank(delta_sigma),
        intruder_energy_share=intruder_energy_share(S_t, ranks, frobenius_sq),
        largest_intruder_rank=largest,
        largest_intruder_sigma_ratio=None if largest is None else float(S_t[largest - 1] / S0[0]),
        epsilon_sweep=epsilon_sweep(max_cos, config.epsilons),
        k_sweep=k_sweep_counts,
        lora_rank=lora_rank,
        similarity=similarity.tolist(),
    )


def analyze_lora_matrix(
    job: _Job, W0: torch.Tensor, base_svd, A: torch.Tensor, B: torch.Tensor, scale: float, config: AnalyzeConfig
) -> MatrixResult:
    """Structured path: top-k of W₀ + s·B·A from the cached base SVD and the factors (no dense SVD)."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    if config.method == "dense":
        return analyze_dense_matrix(
            job, W0, base_svd, W0.to(torch.float64) + scale * (B.to(torch.float64) @ A.to(torch.float64)), config,
            delta_sigma=low_rank_singular_values(B, A, scale) if config.effective_rank else None, lora_rank=int(A.shape[0]),
        )  # fmt: skip
    core = lora_core(base_svd, B, A, scale)
    top = core_top_k(core, config.k)
    max_cos = top.max_abs_cosine(core.p)
    similarity = top.Y[:n_sim].abs().T
    max_cos_all = core_full_spectrum(core).max_abs_cosine(core.p) if config.k_sweep else None
    delta_sigma = low_rank_singular_values(B, A, scale) if config.effective_rank else None
    return _finish(
        job, config, top.S, max_cos, base_svd.S, core.frobenius_sq(), delta_sigma, similarity, max_cos_all,
        lora_rank=int(A.shape[0]),
    )  # fmt: skip


def analyze_dense_matrix(
    job: _Job,
    W0: torch.Tensor,
    base_svd,
    Wt: torch.Tensor,
    config: AnalyzeConfig,
    *,
    delta_sigma: torch.Tensor | None = None,
    lora_rank: int | None = None,
) -> MatrixResult:
    """Dense path: top-k SVD of W_t (Lanczos), compared with all base left singular vectors."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    U0 = base_svd.U
    W0_64, Wt_64 = W0.to(torch.float64), Wt.to(torch.float64)
    if config.k_sweep:
        full = thin_svd(Wt_64)
        top_U, top_S = full.U[:, : config.k], full.S[: config.k]
        max_cos_all = max_abs_cosine(full.U, U0)
    else:
        top = top_k_svd(Wt_64, config.k)
        top_U, top_S = top.U, top.S
        max_cos_all = None
    max_cos = max_abs_cosine(top_U, U0)
    similarity = (top_U.T @ U0[:, :n_sim].to(torch.float64)).abs()
    if delta_sigma is None and config.effective_rank:
        delta_sigma = singular_values(Wt_64 - W0_64)
    return _finish(
        job, config, top_S, max_cos, base_svd.S, float((Wt_64**2).sum()), delta_sigma, similarity, max_cos_all,
        lora_rank=lora_rank,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The job


ProgressCallback = Callable[[int, int, str], None]


def analyze(
    base: str | Path,
    tuned: str | Path,
    config: AnalyzeConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | ProgressCallback = False,
    **overrides: Any,
) -> AnalysisResult:
    """Find intruder dimensions of TUNED (a PEFT LoRA adapter, a run directory, or a dense model) against BASE.

    ``base``: a HuggingFace model directory, a .safetensors file, or ``"minilm"`` (the embedded default).
    Keyword overrides build the config: ``analyze(base, tuned, k=10, epsilon=0.5)``.

    Example::

        result = intrudim.analyze("minilm", "my_adapter/", k=10, epsilon=0.5)
        print(result.total_intruders, result.to_json()["matrices"][0]["intruder_ranks"])
    """
    if config is None:
        config = AnalyzeConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise IntrudimError(f"--device {config.device} was asked for, but no CUDA GPU is available here. Use --device cpu.")
    started = time.perf_counter()
    result = _run(base, tuned, config, cache_dir, use_cache, progress)
    result.seconds = time.perf_counter() - started
    return result


def _run(
    base_spec: str | Path,
    tuned_spec: str | Path,
    config: AnalyzeConfig,
    cache_dir: str | Path | None,
    use_cache: bool,
    progress: bool | ProgressCallback,
) -> AnalysisResult:
    base_src = open_weights(base_spec, allow_pickle=config.allow_pickle)
    tuned_path = resolve_tuned_path(tuned_spec)
    adapter: LoraAdapter | None = None
    tuned_src: WeightSource | None = None
    if is_adapter_dir(tuned_path):
        adapter = LoraAdapter(tuned_path, allow_pickle=config.allow_pickle)
        jobs, skipped = _plan_adapter_jobs(base_src, adapter, config.selection)
    else:
        tuned_src = open_weights(tuned_path if str(tuned_spec) not in EMBEDDED_MODELS else str(tuned_spec),
                                 allow_pickle=config.allow_pickle)  # fmt: skip
        jobs, skipped = _plan_dense_jobs(base_src, tuned_src, config.selection), []
    if not jobs:
        raise IntrudimError(
            f"No matrices to analyse in '{tuned_spec}' against '{base_spec}'"
            + (f" with --modules {config.modules!r}" if config.modules else "")
            + ". By default intrudim analyses the 2-D linear weights inside the transformer blocks; use --modules "
            "REGEX to choose others."
        )
    too_small = next((job for job in jobs if config.k > min(job.shape)), None)
    if too_small is not None:
        raise InvalidConfigError(
            f"k={config.k} is larger than matrix '{too_small.base_key}' allows: it has shape {too_small.shape} and "
            f"so {min(too_small.shape)} singular vectors. Use --k {min(too_small.shape)} or less, or --modules to "
            f"leave that matrix out."
        )
    cache = BaseSVDCache(
        (cache_dir if cache_dir is not None else default_cache_dir()) if use_cache else None,
        dtype=_CACHE_DTYPES[config.cache_dtype],
        device=config.device,
    )
    results: list[MatrixResult] = []
    reporter = _make_reporter(progress, len(jobs))
    try:
        for i, job in enumerate(jobs):
            if reporter is not None:
                reporter(i, len(jobs), job.base_key)
            W0 = _oriented(base_src.load(job.base_key), job.transpose)
            _check_finite(W0, job.base_key, f"BASE '{base_src.path}'")
            base_svd = cache.get(W0)
            if adapter is not None:
                assert job.module is not None
                factors = adapter.factors(job.module)
                _check_finite(factors.A, f"{job.module}.lora_A", f"adapter '{adapter.path}'")
                _check_finite(factors.B, f"{job.module}.lora_B", f"adapter '{adapter.path}'")
                result = analyze_lora_matrix(job, W0, base_svd, factors.A, factors.B, factors.scale, config)
            else:
                assert tuned_src is not None and job.tuned_key is not None
                Wt = _oriented(tuned_src.load(job.tuned_key), job.transpose)
                _check_finite(Wt, job.tuned_key, f"TUNED '{tuned_src.path}'")
                if torch.equal(W0, Wt):
                    result = _unchanged(job, base_svd, config)
                else:
                    result = analyze_dense_matrix(job, W0, base_svd, Wt, config)
            results.append(result)
        if reporter is not None:
            reporter(len(jobs), len(jobs), "done")
    finally:
        base_src.close()
        if tuned_src is not None:
            tuned_src.close()
        if hasattr(reporter, "close"):
            reporter.close()  # type: ignore[union-attr]
    return AnalysisResult(
        base=str(base_spec), tuned=str(tuned_spec), tuned_kind="lora" if adapter is not None else "dense",
        config=config, matrices=results, skipped=skipped, seconds=0.0,
        cache_hits=cache.hits, cache_misses=cache.misses,
    )  # fmt: skip


def _unchanged(job: _Job, base_svd, config: AnalyzeConfig) -> MatrixResult:
    """A matrix left exactly as in BASE: its top vectors are the base's own (max |cos| = 1, no intruders)."""
    k = config.k
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    p = base_svd.rank_dim
    similarity = torch.zeros(k, n_sim, dtype=torch.float64)
    idx = torch.arange(min(k, n_sim))
    similarity[idx, idx] = 1.0
    ones = torch.ones(k, dtype=torch.float64)
    return _finish(
        job, config, base_svd.S[:k], ones, base_svd.S, float((base_svd.S**2).sum()),
        torch.zeros(p, dtype=torch.float64) if config.effective_rank else None, similarity,
        torch.ones(p, dtype=torch.float64) if config.k_sweep else None, lora_rank=None,
    )  # fmt: skip


def _make_reporter(progress: bool | ProgressCallback, total: int):
    if callable(progress):
        return progress
    if not progress:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]analyze"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
    )  # fmt: skip
    bar.start()
    task = bar.add_task("", total=total)

    class _Reporter:
        def __call__(self, done: int, _total: int, name: str) -> None:
            bar.update(task, completed=done, description=name)

        def close(self) -> None:
            bar.stop()

    return _Reporter()


def write_json(result: AnalysisResult, path: str | Path) -> Path:
    from intrudim.fileio import write_text_atomic

    return write_text_atomic(path, json.dumps(result.to_json(), indent=2) + "\n")


__all__ = ["AnalyzeConfig", "AnalysisResult", "MatrixResult", "analyze", "resolve_tuned_path"]
