"""Where intrudim runs inside other tools: :class:`IntruderCallback`, a ``transformers.TrainerCallback`` that
tracks intruder dimensions live in a user's own ``Trainer`` / TRL run (``IntruderCallback(every_n_steps=50)
.attach(trainer)``; :mod:`intrudim.integrations.callback`).

Only this package imports the Trainer machinery, and only when a name is used: ``import intrudim.integrations``
itself imports nothing of transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IntruderCallback", "IntruderPressureWarning", "NotATrainerError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from intrudim.integrations import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'intrudim.integrations' has no attribute {name!r}")
