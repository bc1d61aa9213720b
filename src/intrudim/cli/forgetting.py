"""CLI command ``forgetting``: parse, build a ForgettingConfig, measure, print with rich (docs/forgetting.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from intrudim.cli.common import PlainHelpCommand, base_and_tuned
from intrudim.cli.output import print_lines, terminal_table
from intrudim.errors import IntrudimError


def _fail(error: IntrudimError) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def forgetting_command(
    models: Annotated[list[str], typer.Argument(metavar="[BASE] TUNED", help="BASE: the base model with its head (a HF "
                      "folder, 'minilm'/'smollm2', a Hub id org/name[@rev]); TUNED: a PEFT LoRA adapter, intrudim run "
                      "dir, Trainer checkpoint or fine-tuned model (a folder or Hub id). TUNED alone: BASE is the base "
                      "the adapter records.")],
    text: Annotated[str | None, typer.Option("--text", help="wiki (Wikipedia sample), news (news sample), a UTF-8 file, "
                    "a folder of .txt, or a saved datasets dataset. Default: wiki for LMs, news for sentence-transformers "
                    "encoders.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="At most this many tokens of text are scored.")] = 20_000,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window (LMs), or per sentence (contrastive).")] = 128,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Sequences per forward pass (default 4 windows, "
                          "64 masked copies, 64 sentences).")] = None,
    pairs_per_batch: Annotated[int, typer.Option("--pairs-per-batch", help="Contrastive measure: in-batch candidates.")] = 64,
    resamples: Annotated[int, typer.Option("--bootstrap-resamples", help="Paired bootstrap resamples for the 95% CI.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    out: Annotated[Path | None, typer.Option("--out", help="Write forgetting.json and forgetting.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading .bin/.pt pickle checkpoints.")] = False,
) -> None:
    """Loss on pre-training-like text before and after fine-tuning: perplexity (causal LM), MLM pseudo-loss
    (Salazar et al. 2020; Sec. 4, Figs. 9, 16), or MiniLM's contrastive objective; tuned − base with a 95% CI."""
    from intrudim.evaluate.forgetting_api import forgetting
    from intrudim.evaluate.forgetting_config import ForgettingConfig

    try:
        base, tuned = base_and_tuned(models)
        config = ForgettingConfig(
            text=text, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size, pairs_per_batch=pairs_per_batch,
            bootstrap_resamples=resamples, bootstrap_seed=seed, device=device, allow_pickle=allow_pickle,
        )  # fmt: skip
        if out is not None:
            from intrudim.fileio import ensure_writable_directory

            ensure_writable_directory(out)
        result = forgetting(tuned, base, config=config, progress=not quiet)  # the bar is on stderr
        paths: dict[str, Path] = {}
        if out is not None:
            from intrudim.report.forgetting_report import write_forgetting_outputs

            command = "intrudim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            paths = write_forgetting_outputs(result, out, command=command)
    except IntrudimError as error:
        raise _fail(error) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]: nothing half-written was left behind.")
        raise typer.Exit(130) from None
    data = result.to_json()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        if paths:
            print_lines(Console(stderr=True), [f"report: {paths['html']}"])
        return
    _print_result(data)
    if paths:
        console = Console()
        console.print()
        print_lines(console, [f"report: {paths['html']}", f"json: {paths['json']}"])


def _print_result(data: dict[str, Any]) -> None:
    """The measurement as the terminal shows it: the table, then one fact per line, wrapped between phrases. The
    text's licence is not repeated on every run: it is in forgetting.json and forgetting.html."""
    from intrudim.repair.sweep_result import loss_measure

    measure = data["measure"]
    loss = loss_measure(measure)
    table = terminal_table(f"Forgetting: {loss.name} on the text ({loss.unit}; lower is better)")
    table.add_column("model", justify="left")
    table.add_column(f"loss ({loss.unit})", justify="right")
    lm = data["base"]["perplexity"] is not None
    if lm:
        table.add_column("pseudo-perplexity" if measure == "pseudo_loss" else "perplexity", justify="right")
    contrastive = "retrieval_accuracy" in data["base"]
    if contrastive:
        table.add_column(f"retrieval acc. (of {data.get('pairs_per_batch')})", justify="right")
    for label, key in (("BASE", "base"), ("TUNED", "tuned")):
        row = [label, f"{data[key]['loss']:.4f}"]
        if lm:
            row.append(f"{data[key]['perplexity']:.2f}")
        if contrastive:
            row.append(f"{data[key]['retrieval_accuracy']:.3f}")
        table.add_row(*row)
    low, high = data["ci95"]
    row = ["TUNED − BASE", f"{data['delta']:+.4g}"]
    if lm:
        row.append(f"{data['tuned']['perplexity'] - data['base']['perplexity']:+.2f}")
    if contrastive:
        row.append(f"{data.get('delta_retrieval_accuracy', 0.0):+.3f}")
    table.add_row(*row, style="bold red" if low > 0 else None)
    console = Console()
    console.print(table)
    seq_len = data.get("seq_len")
    units = "sentence pairs" if measure == "contrastive" else f"windows of {seq_len} tokens" if seq_len else "windows"
    lines: list[str | Text] = [
        data["verdict"],
        f"95% CI: paired bootstrap over {data['sequences']} {units} ({data['bootstrap']['resamples']} resamples)",
        f"text: {data['text']['source']}",
        f"{data['tokens']} tokens scored in {data['sequences']} {units}",
        f"measure: {data['measure_description']}",
    ]
    notes = list(data.get("notes", []))
    if data["sequences"] < FEW_SEQUENCES:
        notes.append(f"only {data['sequences']} {units}: the 95% interval of a bootstrap over so few is rough; give "
                     f"more text (--max-tokens) for a firmer one")  # fmt: skip
    lines += [Text.assemble(("note", "yellow"), f": {note}") for note in notes]
    print_lines(console, lines)


FEW_SEQUENCES = 10
"""Below this many windows (or sentence pairs) the terminal says the bootstrap interval is rough."""


def register(app: typer.Typer) -> None:
    """Add ``forgetting`` to ``app``."""
    app.command("forgetting", cls=PlainHelpCommand)(forgetting_command)
