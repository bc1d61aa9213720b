"""Planning: which base/tuned matrix pairs a verb looks at, and how each is read (shared by analyze, repair, scan).

A TUNED input is a PEFT LoRA adapter (read from its factors), an intrudim run directory (its ``final/``),
or a dense fine-tuned model. :func:`open_inputs` opens BASE and TUNED, plans one :class:`MatrixJob` per
matrix (oriented as ``nn.Linear``: (out, in); GPT-2 Conv1D weights transposed), and checks that k fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.errors import IncompatibleWeightsError, IntrudimError, InvalidConfigError, NonFiniteWeightsError
from intrudim.models.opening import open_base_weights, open_tuned, resolve_pair
from intrudim.weights.matching import KeyMatcher
from intrudim.weights.peft_adapter import EMBEDDING_LORA_ADVICE, LoraAdapter
from intrudim.weights.selection import BLOCK_PATTERN, MatrixSelection, is_conv1d
from intrudim.weights.sources import WeightSource


def check_finite(W: torch.Tensor, name: str, where: str) -> None:
    # One reduction in W's own dtype (NaN/Inf propagate into any sum; ~40x cheaper than a float64 sum of bf16);
    # only when it is not finite, a float64 sum tells real NaN/Inf from a sum that merely overflowed (fp16).
    if not bool(torch.isfinite(W.sum())) and not bool(torch.isfinite(W.sum(dtype=torch.float64))):
        bad = int((~torch.isfinite(W)).sum())
        raise NonFiniteWeightsError(
            f"Matrix '{name}' in {where} holds {bad} NaN/Inf value(s). The checkpoint is damaged or training "
            f"diverged; analyse an earlier checkpoint."
        )


def oriented(W: torch.Tensor, transpose: bool) -> torch.Tensor:
    if W.ndim != 2:
        raise IncompatibleWeightsError(f"Expected a 2-D weight matrix, found shape {tuple(W.shape)}.")
    return W.T.contiguous() if transpose else W


@dataclass(frozen=True)
class MatrixJob:
    base_key: str
    shape: tuple[int, int]  # oriented (out, in)
    transpose: bool
    tuned_key: str | None = None  # dense tuned
    module: str | None = None  # adapter module
    embedding: bool = False  # LoRA on an embedding table (lora_embedding_A/B)
    token_rows: bool = False  # peft's trainable tokens: W_t is W₀ with some rows replaced (tuned_key: the module)


def plan_adapter_jobs(
    base: WeightSource, adapter: LoraAdapter, selection: MatrixSelection
) -> tuple[list[MatrixJob], list[dict[str, str]]]:
    matcher = KeyMatcher(base.keys())
    jobs: list[MatrixJob] = []
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
        jobs.append(MatrixJob(base_key=base_key, shape=shape, transpose=transpose, module=module))
    for module in sorted(adapter.embedding_keys):
        base_key = matcher.base_key(module + ".weight")
        if base_key is None:
            raise IncompatibleWeightsError(
                f"Adapter '{adapter.path}' has LoRA on the embedding '{module}', but BASE '{base.path}' has no weight "
                f"'{module}.weight'. Is this adapter for another model?"
            )
        stored = tuple(base.shape(base_key))
        if adapter.embedding_factor_shape(module) != stored:
            raise IncompatibleWeightsError(
                f"Adapter '{adapter.path}' does not fit BASE '{base.path}': the embedding '{module}' has LoRA factors "
                f"for a {adapter.embedding_factor_shape(module)} table, but base weight '{base_key}' is {stored}."
            )
        if not selection.selects(base_key, stored):
            skipped.append({"name": base_key, "reason": EMBEDDING_LORA_ADVICE})
            continue
        jobs.append(MatrixJob(base_key=base_key, shape=(stored[0], stored[1]), transpose=False, module=module,
                              embedding=True))  # fmt: skip
    planned = [(module, _full_weight_job) for module in sorted(adapter.full_weights)]
    planned += [(module, _token_rows_job) for module in sorted(adapter.token_rows)]
    for module, plan in planned:
        job_or_reason = plan(base, adapter, matcher, module, selection)
        if isinstance(job_or_reason, MatrixJob):
            jobs.append(job_or_reason)
        else:
            skipped.append({"name": job_or_reason[0], "reason": job_or_reason[1]})
    for key in adapter.other_tensors:
        skipped.append({"name": key, "reason": "an adapter tensor that is neither LoRA factors, a whole weight nor "
                        "trainable tokens: not analysed; merge the adapter to include its effect"})  # fmt: skip
    jobs.sort(key=lambda job: natural_key(job.base_key))
    return jobs, skipped


FULL_WEIGHT_NOTE = "trained fully in the adapter (modules_to_save)"
TOKEN_ROWS_NOTE = "rows replaced by the adapter's trainable tokens (trainable_token_indices)"


def _full_weight_job(
    base: WeightSource, adapter: LoraAdapter, matcher: KeyMatcher, module: str, selection: MatrixSelection
) -> MatrixJob | tuple[str, str]:
    """A dense job for a weight the adapter saved whole (PEFT's ``modules_to_save``: W_t is that weight), or
    (name, reason) when it cannot or should not be compared with BASE."""
    stored_tuned = adapter.full_weight_shape(module)
    base_key = matcher.base_key(module + ".weight")
    if base_key is None:
        return module + ".weight", (
            f"{FULL_WEIGHT_NOTE}, but BASE stores no such weight (a new module, or one tied to another weight such as "
            f"a tied lm_head): nothing to compare"
        )
    stored = tuple(base.shape(base_key))
    if stored_tuned != stored:
        return base_key, (
            f"{FULL_WEIGHT_NOTE} with shape {stored_tuned}, but BASE's is {stored} (a resized vocabulary?): "
            f"not comparable"
        )
    if not selection.selects(base_key, stored):
        return base_key, f"{FULL_WEIGHT_NOTE}; not selected (embeddings/heads need --include-*, or --modules)"
    transpose = is_conv1d(base_key, base.model_type)
    shape = (stored[1], stored[0]) if transpose else (stored[0], stored[1])
    return MatrixJob(base_key=base_key, shape=shape, transpose=transpose, tuned_key=module)


def _token_rows_job(
    base: WeightSource, adapter: LoraAdapter, matcher: KeyMatcher, module: str, selection: MatrixSelection
) -> MatrixJob | tuple[str, str]:
    """A dense job for an embedding some of whose rows peft's trainable tokens replace (W_t: W₀ with those rows,
    built when read), or (name, reason) when it cannot or should not be compared with BASE."""
    base_key = matcher.base_key(module + ".weight")
    if base_key is None:
        return module, f"{TOKEN_ROWS_NOTE}, but BASE has no weight '{module}.weight'"
    stored = tuple(base.shape(base_key))
    if not selection.selects(base_key, stored):
        return base_key, f"{TOKEN_ROWS_NOTE}; embeddings are analysed with --include-embeddings"
    return MatrixJob(base_key=base_key, shape=(stored[0], stored[1]), transpose=False, tuned_key=module,
                     token_rows=True)  # fmt: skip


def plan_dense_jobs(base: WeightSource, tuned: WeightSource, selection: MatrixSelection) -> list[MatrixJob]:
    if base.model_type and tuned.model_type and base.model_type != tuned.model_type:
        raise IncompatibleWeightsError(
            f"TUNED '{tuned.path}' is a '{tuned.model_type}' model but BASE '{base.path}' is '{base.model_type}'. "
            f"Compare a fine-tuned model with the base model it was fine-tuned from."
        )
    matcher = KeyMatcher(tuned.keys())
    jobs: list[MatrixJob] = []
    for base_key in sorted(base.keys(), key=natural_key):
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
        jobs.append(MatrixJob(base_key=base_key, shape=shape, transpose=transpose, tuned_key=tuned_key))
    return jobs


def natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in name.split(".")]



@dataclass
class AnalysisInputs:
    """BASE and TUNED opened, with the matrix pairs to look at. Close it (or use it as a context manager)."""

    base_spec: str
    tuned_spec: str
    base: WeightSource
    adapter: LoraAdapter | None
    tuned: WeightSource | None
    jobs: list[MatrixJob]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def tuned_kind(self) -> str:
        return "lora" if self.adapter is not None else "dense"

    def base_matrix(self, job: MatrixJob) -> torch.Tensor:
        """W₀ of ``job``, oriented (out, in), checked finite."""
        W0 = oriented(self.base.load(job.base_key), job.transpose)
        check_finite(W0, job.base_key, f"BASE '{self.base.path}'")
        return W0

    def lora_factors(self, job: MatrixJob):
        """The adapter's factors of ``job`` (ΔW = scale·B·A in the analysed orientation), checked finite."""
        assert self.adapter is not None and job.module is not None
        if job.embedding:
            factors = self.adapter.embedding_factors(job.module)
            check_finite(factors.A, f"{job.module}.lora_embedding_B", f"adapter '{self.adapter.path}'")
            check_finite(factors.B, f"{job.module}.lora_embedding_A", f"adapter '{self.adapter.path}'")
            return factors
        factors = self.adapter.factors(job.module)
        check_finite(factors.A, f"{job.module}.lora_A", f"adapter '{self.adapter.path}'")
        check_finite(factors.B, f"{job.module}.lora_B", f"adapter '{self.adapter.path}'")
        return factors

    def tuned_matrix(self, job: MatrixJob, W0: torch.Tensor | None = None) -> torch.Tensor:
        """W_t of a dense TUNED model, a weight a LoRA adapter saved whole (``modules_to_save``), or an embedding
        with the adapter's trainable tokens in place (built on ``W0`` when the caller has read it, else on W₀ read
        here); oriented (out, in), checked finite."""
        assert job.tuned_key is not None
        if self.adapter is not None:
            if job.token_rows:
                Wt = self.adapter.with_token_rows(job.tuned_key, W0 if W0 is not None else self.base_matrix(job))
            else:
                Wt = oriented(self.adapter.full_weight(job.tuned_key), job.transpose)
            check_finite(Wt, job.tuned_key, f"adapter '{self.adapter.path}'")
            return Wt
        assert self.tuned is not None
        Wt = oriented(self.tuned.load(job.tuned_key), job.transpose)
        check_finite(Wt, job.tuned_key, f"TUNED '{self.tuned.path}'")
        return Wt

    def close(self) -> None:
        self.base.close()
        if self.tuned is not None:
            self.tuned.close()

    def __enter__(self) -> AnalysisInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_inputs(
    base_spec: Any, tuned_spec: Any, config: AnalyzeConfig, *, adapter_name: str | None = None, progress: bool = True
) -> AnalysisInputs:
    """Resolve and open BASE and TUNED (any reference of :mod:`intrudim.models`: paths, names, Hub ids, models in
    memory; BASE None: the adapter's recorded base or a PeftModel's own W₀) and plan the matrix pairs; errors name
    the file, key or shape at fault."""
    base_ref, tuned_ref = resolve_pair(base_spec, tuned_spec, allow_pickle=config.allow_pickle,
                                       adapter_name=adapter_name, progress=progress)  # fmt: skip
    base_src = open_base_weights(base_ref, allow_pickle=config.allow_pickle)
    adapter: LoraAdapter | None = None
    tuned_src: WeightSource | None = None
    try:
        opened = open_tuned(tuned_ref, allow_pickle=config.allow_pickle)
        if isinstance(opened, LoraAdapter):
            adapter = opened
            jobs, skipped = plan_adapter_jobs(base_src, adapter, config.selection)
        else:
            tuned_src = opened
            jobs, skipped = plan_dense_jobs(base_src, tuned_src, config.selection), []
        if not jobs:
            raise IntrudimError(
                f"No matrices to analyse in '{tuned_ref.describe()}' against '{base_ref.describe()}'"
                + (f" with --modules {config.modules!r}" if config.modules else "")
                + ". By default intrudim analyses the 2-D linear weights inside the transformer blocks; use --modules "
                "REGEX to choose others."
            )
        # Embedding tables and heads taken in with --include-* may have fewer than k singular vectors (BERT's
        # token_type_embeddings is (2, hidden)): they are skipped with the reason; a block matrix is an error.
        small_extras = [job for job in jobs if config.k > min(job.shape) and not BLOCK_PATTERN.search(job.base_key)]
        for job in small_extras:
            skipped.append({"name": job.base_key, "reason": f"only {min(job.shape)} singular vectors, fewer than "
                            f"k={config.k}"})  # fmt: skip
        jobs = [job for job in jobs if job not in small_extras]
        too_small = next((job for job in jobs if config.k > min(job.shape)), None)
        if too_small is not None:
            raise InvalidConfigError(
                f"k={config.k} is larger than matrix '{too_small.base_key}' allows: it has shape {too_small.shape} "
                f"and so {min(too_small.shape)} singular vectors. Use --k {min(too_small.shape)} or less, or --modules "
                f"to leave that matrix out."
            )
    except BaseException:
        base_src.close()
        if tuned_src is not None:
            tuned_src.close()
        raise
    return AnalysisInputs(base_ref.describe(), tuned_ref.describe(), base_src, adapter, tuned_src, jobs, skipped)
