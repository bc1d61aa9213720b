"""Intruder dimensions tracked live inside a user's own training: :class:`IntruderCallback` (Fig. 7 as it happens).

One piece (over 400 lines): one class whose Trainer hooks share the state of one run — the matrices, their base
SVDs, the timeline, the rank-0 decisions — and its argument checks; the records, JSON and figure are in
:mod:`intrudim.integrations.timeline`.

A ``transformers.TrainerCallback`` for ``transformers.Trainer`` and every trainer built on it (TRL's
``SFTTrainer``…). Added in one line::

    from intrudim.integrations import IntruderCallback

    IntruderCallback(every_n_steps=50).attach(trainer)
    trainer.train()

At train begin it finds the matrices to analyse — the LoRA layers of a peft ``PeftModel`` (W₀ = the frozen weight
inside each layer, ΔW = s·B·A of its adapter), or, for full fine-tuning, the 2-D linear weights inside the
transformer blocks (W₀ = a copy of them taken at train begin) — and gets each one's base SVD once, from intrudim's
on-disk base SVD cache (computed and stored on a miss; one line on stderr says how long that took). Every
``every_n_steps`` optimizer steps, and at the last step, it analyses the live weights exactly as
``intrudim analyze BASE OUTPUT_DIR/checkpoint-N`` would analyse the checkpoint the Trainer saves at that step (same
counts, ranks, energy shares and pressures: the same code, on the same tensors).

What it logs (into the next ``on_log``, so that TensorBoard, W&B, trackio… receive it; transformers' reporters
prefix training logs with ``train/``, e.g. ``train/intrudim/intruders`` in TensorBoard), and into
``trainer.state.log_history``:

- ``intrudim/intruders``: intruder dimensions summed over the analysed matrices (k = 10, ε = 0.5 by default);
- ``intrudim/intruders/<module type>``: the same per module type (``self_attn.q_proj``, ``mlp.down_proj``…);
- ``intrudim/energy_share``: the mean over the analysed matrices of each matrix's intruder energy share
  Σ_{j∈I} σ_j² / ‖W_t‖_F² (matrices without intruders count 0) — ``AnalysisResult.to_json()``'s
  ``intruder_energy_share_mean``; the per-matrix shares are in the timeline;
- ``intrudim/max_pressure``: the largest intruder pressure σ₁(ΔW)/σ_k(W₀) over the matrices (a matrix above
  0.85 is predicted to be intruder-prone; :mod:`intrudim.spectral.prediction`);
- ``intrudim/step``: the step those values were measured at (logging and analysis steps may differ).

Files in ``output_dir`` (default: the Trainer's ``args.output_dir``): ``intrudim_timeline.json`` (every analysed
step × every matrix: count, ranks, energy share, pressure, top-k σ and max |cos|; with k, ε, the adapter and what
the base is), rewritten atomically after each analysis; ``intrudim_intruders.png`` at train end (intruders over the
steps in total and per module type, and Fig. 7's ranks and σ of the intruders of the matrix that has most).

Options: ``stop_above=N`` stops training (``control.should_training_stop``) once the total exceeds N;
``warn_on_pressure`` (default on) warns once, with an :class:`IntruderPressureWarning` (a ``UserWarning``: shown
on stderr and in notebooks, filterable with ``warnings.filterwarnings``), when matrices are predicted
intruder-prone by their pressure before any intruder has appeared.

Costs (benchmarks/bench_callback.py; RESULTS.md §9): the cold fill is one base SVD per matrix, once per base model
and machine (SmolLM2-135M, LoRA on 210 matrices: 16 s on 2 CPU cores), then read from the cache (< 1 s). Each
analysis of a LoRA adapter is a structured top-k per matrix from the factors (no merge, no dense SVD): 2.0–2.5 s for
those 210 matrices (~10 ms a matrix), paid every ``every_n_steps`` steps while training waits — 4.4–4.8 % of training
time at every_n_steps=50 with 1 s steps, under 2 % once a step takes ≥ 2.2 s (or with a larger every_n_steps).
Full fine-tuning needs a top-k Lanczos SVD of each W_t, more per analysis. Memory: the base SVDs stay in host
memory for the run (U₀, and V₀ for tall matrices, in float32: ~420 MB for SmolLM2 with all seven projections);
beyond :data:`IN_MEMORY_BUDGET_BYTES` they are read back from the disk cache at each analysis. Full fine-tuning also
keeps a host copy of the analysed W₀. The analysed W₀ (and for full fine-tuning W_t) are read from the live model,
so on a GPU each analysis copies them to host memory.

A resumed run (``trainer.train(resume_from_checkpoint=...)``) continues the timeline its output_dir holds. For full
fine-tuning W₀ is then read from the folder the model was loaded from (``model.name_or_path``), since the weights at
train begin are the checkpoint's; without such a folder tracking is off for that run, and stderr says why.

Distributed training: only the main process (``state.is_world_process_zero``) analyses, logs and writes; the other
processes do nothing, except that with ``stop_above`` every process receives the main process's decision to stop
(one small broadcast per analysed step), so that all of them stop at the same step. The live analysis needs each
matrix whole on the main process: DDP and single-device training qualify, FSDP/DeepSpeed ZeRO-3 sharding does not.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import TrainerCallback

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.jobs import ReadJob, analyze_read
from intrudim.analysis.planning import AnalysisInputs, open_inputs, plan_dense_jobs
from intrudim.analysis.results import AnalysisResult, MatrixResult
from intrudim.analysis.setup import open_cache
from intrudim.errors import IntrudimError, InvalidConfigError, NonFiniteWeightsError
from intrudim.integrations.timeline import (
    FIGURE_FILE,
    TIMELINE_FILE,
    TIMELINE_FORMAT,
    intruders_figure,
    logged_values,
    step_record,
    timeline_document,
    write_timeline,
)
from intrudim.models.memory import ModuleWeights, model_config_dict, module_weights
from intrudim.models.references import describe_module, is_peft_model
from intrudim.spectral.prediction import DEFAULT_PRESSURE_THRESHOLD, is_predicted
from intrudim.spectral.svd import SVDFactors
from intrudim.threads import analysis_threads
from intrudim.weights.svd_cache import BaseSVDCache, CacheLookup

IN_MEMORY_BUDGET_BYTES = 4 * 2**30
"""Base SVD factors kept in host memory for the run, at most (4 GiB: a few 7B-sized layers' U₀ in float32); the
rest are read back from the disk cache by their key at each analysis (no hashing)."""

_HELD_KEY = "held-in-memory"  # a CacheLookup key for factors computed without a disk cache (never a file name)


class NotATrainerError(IntrudimError, TypeError):
    """``attach`` was given something that is not a ``transformers.Trainer``."""


class IntruderPressureWarning(UserWarning):
    """Matrices are predicted intruder-prone (pressure σ₁(ΔW)/σ_k(W₀) above the threshold) before any intruder."""


@dataclass
class _BaseSVD:
    """One matrix's base SVD for the run: its cache key and the factors (None: read back from the disk cache)."""

    key: str | None
    factors: SVDFactors | None


def _say(text: str) -> None:
    print(f"intrudim: {text}", file=sys.stderr, flush=True)


class IntruderCallback(TrainerCallback):
    """Track intruder dimensions (k = 10, ε = 0.5 by default) of the model a Trainer trains, every
    ``every_n_steps`` optimizer steps and at the last step (Fig. 7 as it happens). What it logs and writes, its
    costs and its limits: the module docstring, and the documentation's page on the callback.

    Add it with ``IntruderCallback(every_n_steps=50).attach(trainer)`` before ``trainer.train()``: ``attach`` puts
    it before the reporting callbacks, so its values reach TensorBoard, W&B and ``trainer.state.log_history`` as
    ``intrudim/intruders``, ``intrudim/energy_share``, ``intrudim/max_pressure``, ….

    Args:
        every_n_steps: Analyse when ``state.global_step % every_n_steps == 0``, and at the last step (default 50).
        k: How many top singular vectors of each tuned matrix are examined (default 10; Sec. 4).
        epsilon: The intruder threshold on max |cos| to every base left singular vector (default 0.5; Sec. 4,
            Definition 1).
        adapter_name: The PeftModel's adapter to track (default None: its active adapter at train begin).
        modules: A regular expression on parameter names choosing the matrices (default None: every 2-D linear
            weight in the transformer blocks; for LoRA, those of them with an adapter).
        stop_above: Stop training once the total count exceeds this (default None: never).
        warn_on_pressure: Warn once (an ``IntruderPressureWarning``) when matrices are predicted intruder-prone,
            intruder pressure σ₁(ΔW)/σ_k(W₀) above 0.85, before any intruder appears (default True; beyond the
            paper, Sec. 5's toy model).
        cache_dir: The base SVD cache directory (default None: intrudim's, ``$INTRUDIM_CACHE/svd`` or
            ``~/.cache/intrudim/svd``, shared with ``intrudim analyze``).
        use_cache: Read and write the base SVD cache (default True); False keeps the base SVDs in memory only.
        output_dir: Where ``intrudim_timeline.json`` and ``intrudim_intruders.png`` go (default None: the
            Trainer's ``args.output_dir``).
        device: ``"cpu"`` (default) or ``"cuda[:N]"``: where the spectral work runs (the weights are read from
            wherever they are).

    After (or during) training, ``callback.timeline`` holds one record per analysed step and
    ``callback.last_result`` the last ``AnalysisResult``.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        *,
        k: int = 10,
        epsilon: float = 0.5,
        adapter_name: str | None = None,
        modules: str | None = None,
        stop_above: int | None = None,
        warn_on_pressure: bool = True,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        output_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise InvalidConfigError(
                f"every_n_steps must be a positive integer (analyse every N optimizer steps); got {every_n_steps!r}."
            )
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise InvalidConfigError(f"epsilon must be a number in (0, 1]; got {epsilon!r}. The paper uses 0.5.")
        if stop_above is not None and (isinstance(stop_above, bool) or not isinstance(stop_above, int) or stop_above < 0):
            raise InvalidConfigError(
                f"stop_above must be None or a non-negative integer (stop once the total count exceeds it); got "
                f"{stop_above!r}."
            )
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name):
            raise InvalidConfigError(f"adapter_name must be None or an adapter's name; got {adapter_name!r}.")
        if modules is not None and not isinstance(modules, str):
            raise InvalidConfigError(f"modules must be None or a regular expression (a str); got {modules!r}.")
        for name, value in (("warn_on_pressure", warn_on_pressure), ("use_cache", use_cache)):
            if not isinstance(value, bool):
                raise InvalidConfigError(f"{name} must be True or False; got {value!r}.")
        if not isinstance(device, str):
            raise InvalidConfigError(f"device must be 'cpu' or 'cuda[:N]'; got {device!r}.")
        # Only what the logged values need: no effective rank (for full fine-tuning a dense SVD of ΔW per matrix) and
        # one base vector in the similarity rows. Counts, ranks, σ, energy shares and pressures do not depend on them.
        self.config = AnalyzeConfig(k=k, epsilon=float(epsilon), modules=modules, device=device,
                                    effective_rank=False, similarity_size=1)  # fmt: skip
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidConfigError(f"device={device!r} was asked for, but no CUDA GPU is available here. Use 'cpu'.")
        self.every_n_steps = every_n_steps
        self.adapter_name = adapter_name
        self.stop_above = stop_above
        self.warn_on_pressure = warn_on_pressure
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.output_dir = output_dir
        self._trainer: weakref.ref | None = None  # set by attach
        self._reset_run()

    def _reset_run(self) -> None:
        """Forget the previous run (a new ``train()``); what a notebook user reads is kept until then."""
        self.timeline: list[dict[str, Any]] = []  # one record per analysed step (timeline.step_record)
        self.last_result: AnalysisResult | None = None
        self.cold_fill: dict[str, Any] | None = None  # the train-begin base SVDs: matrices, seconds, cache hits
        self.analysis_seconds = 0.0  # spent in this run's analyses (not the cold fill)
        self.stopped_at: int | None = None  # the step at which stop_above stopped training
        self._ready = False  # train begin prepared the run on this (main) process
        self._kind = "lora"
        self._adapter: str | None = None
        self._base_spec = ""
        self._model_spec = ""
        self._svds: dict[tuple[str, bool], _BaseSVD] = {}
        self._cache: BaseSVDCache | None = None
        self._frozen: ModuleWeights | None = None  # full fine-tuning: W₀ copied at train begin
        self._pending: dict[str, int | float] = {}
        self._last_step: int | None = None
        self._intruders_seen = False
        self._pressure_warned = False
        self._directory: Path | None = None

    def __repr__(self) -> str:
        return (f"IntruderCallback(every_n_steps={self.every_n_steps}, k={self.config.k}, "
                f"epsilon={self.config.epsilon}, stop_above={self.stop_above})")  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------
    # Attaching

    def attach(self, trainer: Any) -> IntruderCallback:
        """Add this callback to ``trainer`` (a ``transformers.Trainer``, TRL's trainers included) *before* its reporting
        callbacks (TensorBoard, W&B…), so that the values this callback adds to the logs reach them; return it.

        ``Trainer(callbacks=[...])`` and ``trainer.add_callback`` append after the reporters: the values then reach
        ``state.log_history`` but not the trackers. Use ``attach``."""
        from transformers import Trainer

        if not isinstance(trainer, Trainer):
            raise NotATrainerError(
                f"IntruderCallback.attach needs a transformers.Trainer (or a trainer built on it, such as TRL's "
                f"SFTTrainer); got a {type(trainer).__name__}. Create the Trainer first, then call "
                f"IntruderCallback(...).attach(trainer)."
            )
        callbacks = trainer.callback_handler.callbacks
        others = [cb for cb in callbacks if isinstance(cb, IntruderCallback) and cb is not self]
        if others:
            raise IntrudimError(
                "This Trainer already has an IntruderCallback; two would analyse the same weights twice and write the "
                "same files. Remove the other one first (trainer.remove_callback(IntruderCallback))."
            )
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)  # before the reporters: Trainer.log calls on_log in this list's order
        self._trainer = weakref.ref(trainer)
        return self

    def _trainer_object(self) -> Any:
        return None if self._trainer is None else self._trainer()

    def _unwrap(self, model: Any) -> torch.nn.Module:
        """The model as the user built it: what accelerate/DDP (or torch.compile) wrapped, unwrapped."""
        trainer = self._trainer_object()
        if model is None and trainer is not None:
            model = trainer.model
        if model is None:
            raise IntrudimError("IntruderCallback got no model from the Trainer; attach it with .attach(trainer).")
        if trainer is not None:
            return trainer.accelerator.unwrap_model(model)
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model)

    # ----------------------------------------------------------------------------------------------------------
    # Train begin: the matrices, their base SVDs (the cold fill)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._reset_run()
        if not state.is_world_process_zero:
            return
        if self._trainer is None:
            warnings.warn(
                "IntruderCallback was added without .attach(trainer): its values reach trainer.state.log_history, but "
                "reporting callbacks listed before it (TensorBoard, W&B…) do not see them. Use "
                "IntruderCallback(...).attach(trainer).",
                UserWarning,
                stacklevel=2,
            )
        self._directory = Path(self.output_dir if self.output_dir is not None else (args.output_dir or "."))
        model = self._unwrap(model)
        if not self._prepare(model, state.global_step):
            return
        self._ready = True
        if state.global_step > 0:
            self._continue_timeline(state.global_step)

    def _prepare(self, model: torch.nn.Module, step: int) -> bool:
        """Plan the matrices and get every base SVD once (from the disk cache, computed and stored on a miss)."""
        started = time.perf_counter()
        config = self.config
        if is_peft_model(model):
            self._kind = "lora"
            self._adapter = self.adapter_name or model.active_adapter
            inputs = open_inputs(None, model, config, adapter_name=self._adapter, progress=False)
            self._base_spec = f"W0 inside each LoRA layer of {describe_module(model, self._adapter)} (frozen)"
        else:
            if self.adapter_name is not None:
                raise IntrudimError(
                    f"adapter_name={self.adapter_name!r} was given, but the model being trained is a "
                    f"{type(model).__name__}, not a peft PeftModel; leave adapter_name out for full fine-tuning."
                )
            self._kind = "dense"
            base, what = model, f"the weights of {describe_module(model)} copied at train begin (step {step})"
            if step > 0:  # a resumed run: the weights now are a checkpoint's, not the pre-trained ones
                base = _pretrained_folder(model)
                if base is None:
                    _say(
                        f"full fine-tuning resumed at step {step}: intruders are measured against the pre-trained "
                        f"weights, but the model's name_or_path ({getattr(model, 'name_or_path', None)!r}) is not a "
                        f"local model folder to read them from. Intruder tracking is off for this run; start the run "
                        f"from step 0 with the callback, or load the model from its pre-trained folder."
                    )
                    return False
                what = f"the pre-trained weights in {base} (the model's name_or_path; the run resumed at step {step})"
            inputs = open_inputs(base, model, config, progress=False)
            with inputs:
                copies = {job.base_key: inputs.base.load(job.base_key).detach().to("cpu", copy=True)
                          for job in inputs.jobs}  # fmt: skip
                self._frozen = ModuleWeights(what, copies, inputs.base.config or model_config_dict(model))
            self._base_spec = what
            inputs = self._dense_inputs(model)
        self._model_spec = describe_module(model, self._adapter)
        self._cache = open_cache(config, self.cache_dir, self.use_cache)
        held = 0
        with inputs, analysis_threads():
            for job in inputs.jobs:
                W0 = inputs.base_matrix(job)
                found = self._cache.lookup(W0)
                factors = self._cache.resolve(W0, found)
                size = sum(t.numel() * t.element_size() for t in (factors.U, factors.S, factors.Vh) if t is not None)
                keep = found.key is None or held + size <= IN_MEMORY_BUDGET_BYTES
                held += size if keep else 0
                self._svds[(job.base_key, job.transpose)] = _BaseSVD(found.key, factors if keep else None)
        seconds = time.perf_counter() - started
        hits, misses = self._cache.hits, self._cache.misses
        self.cold_fill = {"matrices": len(self._svds), "seconds": round(seconds, 3), "cache_hits": hits,
                          "cache_misses": misses, "cache_dir": None if self._cache.directory is None
                          else str(self._cache.directory), "held_bytes": held}  # fmt: skip
        source = f"{hits} from the cache" if self._cache.directory is not None else "no disk cache"
        _say(f"base SVDs of {len(self._svds)} matrices, {seconds:.1f} s ({source})")
        return True

    def _dense_inputs(self, model: torch.nn.Module) -> AnalysisInputs:
        """Full fine-tuning: W₀ (the copy) against the live weights, the matrices planned at train begin."""
        assert self._frozen is not None
        tuned = module_weights(model)
        jobs = plan_dense_jobs(self._frozen, tuned, self.config.selection)
        return AnalysisInputs(self._base_spec, describe_module(model), self._frozen, None, tuned, jobs)

    def _continue_timeline(self, step: int) -> None:
        """A resumed run continues the timeline its output_dir holds (the steps up to the one resumed from)."""
        assert self._directory is not None
        try:
            document = json.loads((self._directory / TIMELINE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        same = (
            isinstance(document, dict) and document.get("format") == TIMELINE_FORMAT
            and document.get("k") == self.config.k and document.get("epsilon") == self.config.epsilon
            and document.get("tuned_kind") == self._kind and document.get("modules") == self.config.modules
        )  # fmt: skip
        if same:
            self.timeline = [r for r in document.get("steps", []) if isinstance(r, dict) and r.get("step", step + 1) <= step]
            self._intruders_seen = any(r.get("total_intruders") for r in self.timeline)

    # ----------------------------------------------------------------------------------------------------------
    # Analysis of the live weights

    def _open_live(self, model: torch.nn.Module) -> AnalysisInputs:
        """The in-memory inputs, opened again at every analysis (a dict of references to the live tensors: the
        Trainer or accelerate may have moved or wrapped the model since the last one)."""
        if self._kind == "lora":
            return open_inputs(None, model, self.config, adapter_name=self._adapter, progress=False)
        return self._dense_inputs(model)

    def _base_factors(self, key: tuple[str, bool], W0: torch.Tensor) -> CacheLookup:
        assert self._cache is not None
        entry = self._svds.get(key)
        if entry is not None and entry.factors is not None:
            return CacheLookup(entry.key or _HELD_KEY, entry.factors)
        if entry is not None and entry.key is not None:
            found = self._cache.lookup_key(entry.key)  # beyond the memory budget: read back by key, no hashing
            if found.factors is not None:
                return found
        found = self._cache.lookup(W0)  # a matrix not planned at train begin, or a cache entry removed since
        return CacheLookup(found.key or _HELD_KEY, self._cache.resolve(W0, found))

    def analyse(self, model: torch.nn.Module) -> AnalysisResult:
        """Analyse ``model``'s weights now against the base SVDs prepared at train begin (the Trainer calls this
        every ``every_n_steps`` steps; also usable by hand between steps). Numbers equal ``intrudim.analyze`` of
        the same weights saved to disk."""
        if not self._ready:
            raise IntrudimError("IntruderCallback has not prepared a run yet: it analyses after the Trainer's train begin.")
        started = time.perf_counter()
        served = BaseSVDCache(None)  # counts the base SVDs served to the analysis (all prepared: never a disk access)
        matrices: list[MatrixResult] = []
        with self._open_live(model) as inputs, analysis_threads():
            for job in inputs.jobs:
                W0 = inputs.base_matrix(job)
                cached = self._base_factors((job.base_key, job.transpose), W0)
                if job.module is None:  # dense: a fully trained W_t (full fine-tuning or modules_to_save)
                    read = ReadJob(job, W0, cached, Wt=inputs.tuned_matrix(job, W0))
                else:
                    read = ReadJob(job, W0, cached, factors=inputs.lora_factors(job))
                matrices.append(analyze_read(read, served, self.config))
        return AnalysisResult(
            base=self._base_spec, tuned=inputs.tuned_spec, tuned_kind=inputs.tuned_kind, config=self.config,
            matrices=matrices, skipped=inputs.skipped, seconds=time.perf_counter() - started,
            cache_hits=served.hits, cache_misses=served.misses,
        )  # fmt: skip

    def _measure(self, state, model: Any) -> bool:
        """Analyse the live weights at ``state.global_step``, record and queue the values; True to stop training."""
        step = int(state.global_step)
        started = time.perf_counter()
        try:
            result = self.analyse(self._unwrap(model))
        except NonFiniteWeightsError as exc:  # training diverged: say so, and let the user's run decide what to do
            _say(f"step {step} not analysed: {exc}")
            return False
        seconds = time.perf_counter() - started
        self.analysis_seconds += seconds
        self.last_result = result
        self._last_step = step
        record = step_record(result, step, state.epoch, seconds)
        self.timeline = [r for r in self.timeline if r["step"] != step] + [record]
        self._pending = logged_values(record)
        self._warn_on_pressure(result, step)
        if result.total_intruders:
            self._intruders_seen = True
        stop = self.stop_above is not None and result.total_intruders > self.stop_above and self.stopped_at is None
        if stop:
            self.stopped_at = step
            _say(
                f"{result.total_intruders} intruder dimensions at step {step} exceed stop_above={self.stop_above}: "
                f"training stops here (control.should_training_stop)."
            )
        self._write_timeline()
        return stop

    def _warn_on_pressure(self, result: AnalysisResult, step: int) -> None:
        if not self.warn_on_pressure or self._pressure_warned or self._intruders_seen or result.total_intruders:
            return
        flagged = [m for m in result.matrices if is_predicted(m.intruder_pressure, DEFAULT_PRESSURE_THRESHOLD)]
        if not flagged:
            return
        top = max(flagged, key=lambda m: m.intruder_pressure or 0.0)
        self._pressure_warned = True
        warnings.warn(
            IntruderPressureWarning(
                f"intrudim: at step {step}, {len(flagged)} of {len(result.matrices)} matrices have intruder pressure "
                f"σ₁(ΔW)/σ_k(W₀) above {DEFAULT_PRESSURE_THRESHOLD:g} (highest {top.intruder_pressure:.2f}, in "
                f"{top.name}) but no intruder dimension has appeared yet: such matrices are predicted to develop "
                f"intruders as training goes on. Shown once per run; warn_on_pressure=False turns it off."
            ),
            stacklevel=3,
        )

    def _write_timeline(self) -> None:
        assert self._directory is not None
        document = timeline_document(
            self.timeline, config=self.config, tuned_kind=self._kind, adapter_name=self._adapter, base=self._base_spec,
            model=self._model_spec, pressure_threshold=DEFAULT_PRESSURE_THRESHOLD, cold_fill=self.cold_fill,
            stopped=None if self.stopped_at is None else {"step": self.stopped_at, "stop_above": self.stop_above},
        )  # fmt: skip
        write_timeline(document, self._directory / TIMELINE_FILE)

    def _due(self, state) -> bool:
        step = state.global_step
        return step > 0 and (step % self.every_n_steps == 0 or (state.max_steps > 0 and step >= state.max_steps))

    # ----------------------------------------------------------------------------------------------------------
    # Trainer events

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self._due(state):
            return
        stop = False
        if self._ready and state.is_world_process_zero:
            stop = self._measure(state, model)
        if self.stop_above is not None:
            stop = _agree_across_processes(stop)
        if stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._ready or not state.is_world_process_zero or not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history:  # Trainer.log appended {**logs, "step": …} just before calling on_log
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self._ready or not state.is_world_process_zero:
            return
        if self._last_step != state.global_step and state.global_step > 0:
            self._measure(state, model)  # training ended at a step not analysed yet (another callback stopped it)
        if self._pending:  # measured after the last log: log them now, so that the trackers get the last values
            trainer = self._trainer_object()
            if trainer is not None:
                trainer.log({})
            else:
                state.log_history.append({**self._pending, "step": state.global_step})
                self._pending = {}
        assert self._directory is not None
        if self.timeline:
            self._write_timeline()
            figure = intruders_figure(self.timeline, self._directory / FIGURE_FILE, self.config.k)
            last = self.timeline[-1]
            _say(
                f"{last['total_intruders']} intruder dimensions at step {last['step']} (k={self.config.k}, "
                f"ε={self.config.epsilon:g}, {last['matrices_analysed']} matrices); {len(self.timeline)} steps analysed "
                f"in {self.analysis_seconds:.1f} s; timeline {self._directory / TIMELINE_FILE}"
                + (f", figure {figure}" if figure is not None else "")
            )


def _agree_across_processes(stop: bool) -> bool:
    """The main process's decision to stop, on every process of a distributed run (each must leave the training loop
    at the same step, or the others wait forever in their next collective)."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() < 2:
        return stop
    decision = [stop]
    distributed.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def _pretrained_folder(model: torch.nn.Module) -> str | None:
    """The local folder a model was loaded from (``name_or_path``), when it holds a model: the pre-trained weights of a
    resumed full fine-tuning run."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name or not Path(str(name)).is_dir():
        return None
    folder = Path(str(name))
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return str(folder) if has_weights else None
