"""What every intrudim command shares: the consoles, the error guard, the help layout, quieting libraries, the
``[BASE] TUNED`` arguments, the command line as typed, and the one-line summary of skipped matrices.

Results go to stdout (``--json``: one JSON document and nothing else); progress and messages go to stderr.
Errors meant for people (:class:`~intrudim.errors.IntrudimError`) are printed as one paragraph, exit code 2.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console

from intrudim.errors import IntrudimError
from intrudim.weights.names import short_matrix_name

stdout = Console()
stderr = Console(stderr=True)
T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn an IntrudimError into a one-paragraph message and exit code 2 (no traceback)."""
    try:
        return fn()
    except IntrudimError as exc:
        # at a terminal, wrapped between words at its width; in a file or pipe, one line (grep- and log-friendly)
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=not stderr.is_terminal)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]: nothing half-written was left behind (outputs are written atomically).")
        raise typer.Exit(130) from None


class PlainHelpCommand(typer.core.TyperCommand):
    """A command whose --help reads well at 80 columns: click's plain layout (flags shown as flags, help text
    wrapped to the terminal, not to a narrow column) and a usage line with the arguments' names
    (``intrudim analyze [OPTIONS] BASE TUNED``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rich_markup_mode = None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.+)\}(?:\.\.\.)?$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


def quiet_libraries() -> None:
    """Silence library noise in intrudim's output: transformers' and huggingface_hub's progress bars ("Loading
    weights", "Writing model shards"), their info/warning logs, and peft's use of transformers' deprecated
    ``is_gradient_checkpointing``. intrudim's own progress (rich, on stderr) is not affected. A user who wants the
    library output back sets ``TRANSFORMERS_VERBOSITY=info`` or ``HF_HUB_DISABLE_PROGRESS_BARS=0``."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers when it is imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    if "transformers" in sys.modules:  # already imported: the environment is read too late, so say it directly
        import logging

        from transformers.utils import logging as transformers_logging

        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity(getattr(logging, os.environ["TRANSFORMERS_VERBOSITY"].upper(), logging.ERROR))


def base_and_tuned(models: list[str]) -> tuple[str | None, str]:
    """``[BASE] TUNED`` as typed: two references, or TUNED alone (its recorded base is used)."""
    if len(models) == 1:
        return None, models[0]
    if len(models) == 2:
        return models[0], models[1]
    raise IntrudimError(
        f"Expected [BASE] TUNED (one or two references), got {len(models)}: {' '.join(models)}. To look at many "
        f"adapters of one base, use `intrudim scan BASE TUNED...`."
    )


def command_line() -> str:
    """The command as the user typed it (for reports: how to run it again)."""
    return "intrudim " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def skipped_summary(skipped: list[dict[str, str]], shown: int = 3) -> list[str]:
    """One line per reason for the matrices left out (not one line per matrix): count, a few names, the reason."""
    by_reason: dict[str, list[str]] = {}
    for entry in skipped:
        by_reason.setdefault(entry["reason"], []).append(entry["name"])
    lines = []
    for reason, names in by_reason.items():
        labels = [short_matrix_name(n if n.endswith(".weight") else n + ".weight") for n in names]
        preview = ", ".join(labels[:shown]) + (f", … (+{len(labels) - shown})" if len(labels) > shown else "")
        what = "1 matrix" if len(names) == 1 else f"{len(names)} matrices"
        lines.append(f"[yellow]skipped[/] {what} ({preview}): {reason}")
    return lines
