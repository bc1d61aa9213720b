"""intrudim: find, measure and repair intruder dimensions in fine-tuned transformers.

Reproduces "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (Shuttleworth et al.).
"""

from __future__ import annotations

import gc as _gc

from intrudim.threads import prefer_passive_openmp
from intrudim.version import __version__

prefer_passive_openmp()  # before torch loads OpenMP: no spin-waiting on shared cores (intrudim.threads)

# Importing torch and scipy creates some 200 000 container objects, none of them garbage; the cyclic collector's passes
# over them while they are created cost ~0.2-0.3 s of CPU per process (benchmarks/bench_end_to_end.py). Collection resumes
# (as it was) once the imports are done.
_collecting = _gc.isenabled()
_gc.disable()
try:
    from intrudim.analyze import AnalysisResult, AnalyzeConfig, MatrixResult, analyze  # noqa: E402
    from intrudim.errors import IntrudimError  # noqa: E402
    from intrudim.repair.core import repair  # noqa: E402  (binds the function over the subpackage's name)
finally:
    if _collecting:
        _gc.enable()
    del _collecting

__all__ = [
    "AnalysisResult", "AnalyzeConfig", "IntrudimError", "MatrixResult", "analyze", "forgetting", "repair",
    "__version__",
]  # fmt: skip


def __getattr__(name: str):  # the heavier verbs load on first use: `import intrudim` stays fast
    if name == "forgetting":
        from intrudim.evaluate.forgetting_api import forgetting

        return forgetting
    raise AttributeError(f"module 'intrudim' has no attribute {name!r}")
