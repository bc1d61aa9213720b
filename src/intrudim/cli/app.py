"""The `intrudim` command line: the Typer app, ``--version``, and the registration of every command.

Each command lives in a module of its own (``cli/<verb>.py``: thin wrappers that build a config, call the library
and print with rich); what they share is in ``cli/common.py``, ``cli/output.py`` and ``cli/options.py``.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Annotated

import typer

from intrudim.cli import analyze, continual, demo, forgetting, regime, repair, scan, toy, train
from intrudim.cli.common import quiet_libraries, stdout

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="intrudim",
    help="Find, measure and repair intruder dimensions in fine-tuned transformers "
    "(Shuttleworth et al., 'LoRA vs Full Fine-tuning: An Illusion of Equivalence').",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    """``intrudim --version``: this package's version and those of the libraries its numbers depend on (for bug
    reports), read from the installed metadata without importing them."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "transformers", "peft", "scipy", "numpy"))
    line = f"intrudim {installed('intrudim')} ({libraries}; Python {sys.version.split()[0]})"
    stdout.print(line, highlight=False, soft_wrap=True)
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Find, measure and repair intruder dimensions in fine-tuned transformers."""


analyze.register(app)  # analyze (README; docs/cli.md)
toy.register(app)  # toy (Sec. 5, App. C)
train.register(app)  # train, tasks, sweep, predict (docs/train.md)
forgetting.register(app)  # forgetting (docs/forgetting.md)
repair.register(app)  # repair (docs/repair.md)
continual.register(app)  # continual (docs/continual.md)
scan.register(app)  # scan (docs/scan.md)
demo.register(app)  # demo (docs/demo.md)
regime.register(app)  # regime (docs/regime.md)


def main() -> None:
    # Everything imported so far (torch alone: some 200 000 container objects) lives until the process ends: keep it
    # out of the cyclic collector's passes, and above all out of the full collection at exit (~0.4 s of CPU per command).
    gc.freeze()
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
