"""The `intrudim` command line: thin wrappers that build a config, call the library and print with rich.

Results go to stdout (``--json``: one JSON document and nothing else); progress and messages go to stderr.
Errors meant for people (:class:`~intrudim.errors.IntrudimError`) are printed as one paragraph, exit code 2.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from intrudim.errors import IntrudimError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="intrudim",
    help="Find, measure and repair intruder dimensions in fine-tuned transformers "
    "(Shuttleworth et al., 'LoRA vs Full Fine-tuning: An Illusion of Equivalence').",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stdout = Console()
stderr = Console(stderr=True)
T = TypeVar("T")

DEFAULT_TOP = 30
"""`analyze` prints every matrix of a model with at most this many, else this many of those with intruders (most
first): a 7B model has some 224 matrices, more than anyone reads in a terminal (all are in --json and --out)."""


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


def run_guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn an IntrudimError into a one-paragraph message and exit code 2 (no traceback)."""
    try:
        return fn()
    except IntrudimError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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


def _command_line() -> str:
    return "intrudim " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def terminal_table(title: str | None = None) -> Table:
    """The one table style of every intrudim verb: a rule under the header only (``box.SIMPLE_HEAD``), one space
    of padding either side of a cell and none at the table's edges."""
    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)


_PHRASE_START = re.compile(r"(?<=[,;:] )|(?<= )(?=\()|(?<= — )")
CONTINUATION_INDENT = 2


def phrase_lines(text: str, width: int) -> list[tuple[int, int]]:
    """Where to cut one line of output that is wider than ``width``: (start, end) offsets of its lines. It is cut
    between phrases (after ", ", "; ", ": " or " — ", before " (", never inside brackets), not inside one, and a
    phrase longer than a line is cut at its spaces only: a word (a file path, a name) is never cut, so
    ``label: /a/path`` too long for one line becomes ``label:`` and the whole path on the next. Lines after the
    first are meant to be indented by :data:`CONTINUATION_INDENT`."""
    if cell_len(text) <= width:
        return [(0, len(text))]
    depth, outside = 0, []  # outside[i]: text[i] is not inside brackets, whose content is one phrase
    for char in text:
        outside.append(depth == 0)
        depth = depth + 1 if char in "([{" else max(depth - 1, 0) if char in ")]}" else depth
    cuts = sorted({0, len(text), *(m.start() for m in _PHRASE_START.finditer(text) if outside[m.start()])})
    pieces: list[tuple[int, int]] = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        if cell_len(text[start:end].rstrip()) <= width - CONTINUATION_INDENT:
            pieces.append((start, end))
        else:  # a phrase too long for a line: its words
            words = [start, *(start + m.end() for m in re.finditer(r" +", text[start:end]) if start + m.end() < end)]
            pieces += list(zip(words, [*words[1:], end], strict=True))
    lines: list[tuple[int, int]] = []
    line_start, line_end = pieces[0]
    for start, end in pieces[1:]:
        room = width - (CONTINUATION_INDENT if lines else 0)
        if cell_len(text[line_start:end].rstrip()) > room:
            lines.append((line_start, line_end))
            line_start = start
        line_end = end
    lines.append((line_start, line_end))
    return [(start, start + len(text[start:end].rstrip())) for start, end in lines]


def print_lines(console: Console, lines: list[str | Text], style: str | None = None) -> None:
    """Print summary lines, one fact each, wrapped at phrase boundaries to the console's width
    (:func:`phrase_lines`): a path is never cut nor parted from its label's line by rich. ``str`` lines are plain
    text (no markup: paths may hold brackets); pass a :class:`rich.text.Text` for styled parts."""
    width = console.width
    for line in lines:
        text = line.copy() if isinstance(line, Text) else Text(line)
        if style:
            text.stylize(style)
        for number, (start, end) in enumerate(phrase_lines(text.plain, width)):
            piece = text[start:end]
            if number and cell_len(piece.plain) + CONTINUATION_INDENT <= width:
                piece = Text(" " * CONTINUATION_INDENT) + piece
            console.print(piece, soft_wrap=True, highlight=False)


@app.command(cls=PlainHelpCommand)
def analyze(
    models: Annotated[list[str], typer.Argument(metavar="[BASE] TUNED", show_default=False,
                      help="BASE: the base model (a Hugging Face folder, a .safetensors file, 'minilm'/'smollm2' "
                      "(embedded) or a Hub repo id org/name[@revision]). TUNED: a PEFT LoRA adapter, an intrudim run "
                      "dir, a Trainer output_dir or checkpoint-N, or a fine-tuned model, as a folder or a Hub id. "
                      "With TUNED alone, BASE is the base the adapter records (base_model_name_or_path).")],
    k: Annotated[int, typer.Option(help="Top-k tuned singular vectors examined per matrix.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold on max |cos| to every base vector, in (0, 1].")] = 0.5,
    modules: Annotated[str | None, typer.Option(metavar="REGEX", help="Regex on parameter names choosing the matrices (replaces the default choice).")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Write analysis.json, analysis.csv, figures and report.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    device: Annotated[str, typer.Option(metavar="cpu|cuda[:N]", help="Where base SVDs are computed.")] = "cpu",
    cache: Annotated[Path | None, typer.Option("--cache", "--cache-dir", metavar="DIR", help="Base SVD cache directory (default: $INTRUDIM_CACHE or ~/.cache/intrudim/svd).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the base SVD cache.")] = False,
    cache_dtype: Annotated[str, typer.Option(metavar="float32|float64", help="Precision of cached base factors: float32 (half the disk) or float64 (the same counts as --no-cache; values to rounding).")] = "float32",
    k_sweep: Annotated[bool, typer.Option("--k-sweep", help="Also count intruders for k = 20%…100% of each matrix's singular vectors (Fig. 11).")] = False,
    include_embeddings: Annotated[bool, typer.Option("--include-embeddings", help="Also analyse embedding tables (left out by default).")] = False,
    include_heads: Annotated[bool, typer.Option("--include-heads", help="Also analyse heads: LM head, classifier, pooler (left out by default).")] = False,
    method: Annotated[str, typer.Option(metavar="auto|structured|dense", help="LoRA adapters: auto = structured (top-k from the factors and the cached base SVD, never merged); dense = merge and take a dense SVD (the slow reference). Dense tuned models always take the dense top-k.")] = "auto",
    effective_rank: Annotated[bool, typer.Option("--effective-rank/--no-effective-rank",
                              help="Effective rank of ΔW (Fig. 6); for dense models it needs all singular values of ΔW.")] = True,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading .bin/.pt pickle checkpoints (they can run code: only for files you trust).")] = False,
    threads: Annotated[int | None, typer.Option(metavar="N", help="Run torch and numpy/scipy BLAS on at most N threads (default: torch on every core for the large SVDs, BLAS on one for the small products).")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Print at most N matrices: all of them when there are N or fewer, else the N with the most intruders (most first) and one line counting the rest. Every matrix is in --json and in the CSV/JSON of --out.")] = DEFAULT_TOP,
    print_all: Annotated[bool, typer.Option("--all", help="Print every matrix, in the model's order (instead of --top).")] = False,
) -> None:
    """Count intruder dimensions of TUNED against BASE, per matrix (Sec. 3–4, Figs. 1–6, 11)."""
    from intrudim.analyze import AnalyzeConfig
    from intrudim.analyze import analyze as run_analysis

    def work() -> None:
        base, tuned = base_and_tuned(models)
        if top < 0:
            raise IntrudimError(f"--top must be 0 or more (matrices printed); got {top}. --all prints every matrix.")
        if threads is not None:
            from intrudim.threads import limit_threads

            limit_threads(threads)
        config = AnalyzeConfig(
            k=k, epsilon=epsilon, modules=modules, include_embeddings=include_embeddings,
            include_heads=include_heads, k_sweep=k_sweep, method=method, device=device,
            cache_dtype=cache_dtype, allow_pickle=allow_pickle, effective_rank=effective_rank,
        )  # fmt: skip
        if out is not None:
            from intrudim.fileio import ensure_writable_directory

            ensure_writable_directory(out)
        result = run_analysis(base, tuned, config, cache_dir=cache, use_cache=not no_cache, progress=True)
        paths: dict[str, Path] = {}
        if out is not None:
            from intrudim.report.analysis_report import write_analysis_outputs

            paths = write_analysis_outputs(result, out, command=_command_line())
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            if paths:
                print_lines(stderr, [f"report: {paths['html']}"])
            return
        _print_analysis(result, top=None if print_all else top)
        if paths:
            stdout.print()
            print_lines(stdout, [f"report: {paths['html']}", f"json: {paths['json']}", f"csv: {paths['csv']}"])

    run_guarded(work)


_ATTENTION_PART = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_PART = re.compile(r"^(?:mlp|feed_forward|ffn|intermediate|output)$", re.IGNORECASE)
_SHORT_LEAF = {
    "query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "out_proj": "o", "c_attn": "qkv", "qkv_proj": "qkv", "query_key_value": "qkv", "Wqkv": "qkv",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "c_fc": "up", "fc1": "up", "fc2": "down",
    "fc_in": "up", "fc_out": "down", "w1": "gate", "w3": "up", "w2": "down", "wi": "up", "wo": "down",
    "dense_h_to_4h": "up", "dense_4h_to_h": "down", "gate_up_proj": "gate_up",
}  # fmt: skip


def short_matrix_name(name: str) -> str:
    """A short label for terminal tables, from the key alone: layer index + module type, e.g.
    'encoder.layer.4.attention.self.query.weight' → 'L4 attn.q', 'model.layers.4.mlp.up_proj.weight' → 'L4 mlp.up'.
    Keys outside the blocks keep their name without '.weight'; full names stay in JSON and CSV."""
    from intrudim.weights.selection import layer_index, module_type

    layer = layer_index(name)
    kind = module_type(name)
    if layer is None:
        return kind
    parts = kind.split(".")
    leaf, path = parts[-1], parts[:-1]
    if any(_ATTENTION_PART.search(part) for part in path) or leaf in ("c_attn", "query", "key", "value"):
        label = "attn." + {"dense": "o", "c_proj": "o"}.get(leaf, _SHORT_LEAF.get(leaf, leaf))
    elif path and _MLP_PART.match(path[0]):
        if path[0].lower() == "intermediate":  # BERT: intermediate.dense (MLP in), output.dense (MLP out)
            label = "mlp.up"
        elif path[0].lower() == "output":
            label = "mlp.down"
        else:
            label = "mlp." + {"c_proj": "down"}.get(leaf, _SHORT_LEAF.get(leaf, leaf))
    else:
        label = kind
    return f"L{layer} {label}"


def _rank_ranges(ranks: list[int]) -> str:
    """1,2,3,4,7 → '1-4,7': intruder ranks compactly."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def matrices_to_print(matrices: list[Any], top: int | None) -> list[Any]:
    """The rows `analyze` prints (``--top``): every matrix, in the model's order, when there are ``top`` or fewer
    (or ``top`` is None: ``--all``); otherwise at most ``top`` of the matrices with intruders, the most intruders
    first (ties: the model's order)."""
    if top is None or len(matrices) <= top:
        return list(matrices)
    with_intruders = [m for m in matrices if m.intruders]
    return sorted(with_intruders, key=lambda m: -m.intruders)[:top]  # sorted() is stable: ties keep model order


def unlisted_lines(matrices: list[Any], shown: list[Any]) -> list[str]:
    """What the table left out (one line: how many, with and without intruders) and where every matrix is."""
    hidden = len(matrices) - len(shown)
    if not hidden:
        return []
    hidden_with = sum(1 for m in matrices if m.intruders) - sum(1 for m in shown if m.intruders)
    what = "matrix" if hidden == 1 else "matrices"
    more = f"… and {hidden} more {what} not listed" if shown else f"{hidden} {what} not listed"
    if hidden_with == 0:
        count = f"{more}, without intruders"
    elif hidden_with == hidden:
        count = f"{more}, with intruders"
    else:
        count = f"{more}: {hidden_with} with intruders, {hidden - hidden_with} without"
    return [count, "every matrix: --all here, or --json, or analysis.csv/.json in --out"]


def _print_analysis(result: Any, top: int | None = DEFAULT_TOP) -> None:
    """One line per matrix (at most ``top``, :func:`matrices_to_print`; ``None``: all), readable at 80 columns;
    full names are in the JSON and CSV. Then the summary, one fact per line."""
    names = [short_matrix_name(m.name) for m in result.matrices]
    if len(set(names)) < len(names):  # two matrices share a short label: fall back to the module type
        from intrudim.weights.selection import module_type

        names = [f"L{m.layer} {module_type(m.name)}" if m.layer is not None else module_type(m.name)
                 for m in result.matrices]  # fmt: skip
    label_of = {id(m): label for label, m in zip(names, result.matrices, strict=True)}
    shown = matrices_to_print(result.matrices, top)
    if shown:
        table = terminal_table(f"Intruder dimensions (k={result.k}, ε={result.epsilon})")
        table.add_column("matrix", no_wrap=True)
        table.add_column("shape", justify="right", no_wrap=True)
        table.add_column("intr.", justify="right", no_wrap=True)
        table.add_column("ranks", justify="right", overflow="fold")
        table.add_column("min max|cos|", justify="right", no_wrap=True)
        table.add_column("eff.rank ΔW", justify="right", no_wrap=True)
        for m in shown:
            table.add_row(
                label_of[id(m)], f"{m.shape[0]}×{m.shape[1]}", str(m.intruders), _rank_ranges(m.intruder_ranks),
                f"{min(m.max_abs_cos):.3f}", "" if m.effective_rank_delta is None else f"{m.effective_rank_delta:.2f}",
                style="bold red" if m.intruders else None,
            )  # fmt: skip
        stdout.print(table)
    print_lines(stdout, unlisted_lines(result.matrices, shown), style="dim")
    print_lines(stdout, result.summary_lines())
    print_lines(stdout, [Text.from_markup(line) for line in skipped_summary(result.skipped)])


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


@app.command(cls=PlainHelpCommand)
def toy(
    n: Annotated[int, typer.Option(help="Size n of the n×n Gaussian W in W + λ·v vᵀ (Sec. 5).")] = 768,
    k: Annotated[int, typer.Option(help="Top-k singular vectors of W + λ·v vᵀ examined for intruders.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold on max |cos| to every singular vector of W, in (0, 1].")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed for W, v and the App. C vectors.")] = 0,
    trials: Annotated[int, typer.Option(help="Random unit vectors per n for the App. C baseline.")] = 200,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Write toy.json, figures and toy.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
) -> None:
    """The toy model of Sec. 5: sweep λ in W + λ·v vᵀ (W Gaussian, v a random unit vector) and report, per λ,
    the intruders among the top-k (max |cos| to W's singular vectors < ε) and the rank of v's direction, with the
    smallest λ/σ_max at which each appears. Sec. 5 argues λ > σ_max(W) suffices; intruders appear earlier, from
    about λ = 0.5·σ_max. Also the random-vector max-cosine baseline (App. C)."""
    from intrudim.spectral.toy import random_vector_baseline, toy_findings, toy_lambda_sweep

    def work() -> None:
        if n < 2 or not (1 <= k <= n):
            raise IntrudimError(f"--n must be ≥ 2 and --k between 1 and n; got n={n}, k={k}.")
        if not (0 < epsilon <= 1):
            raise IntrudimError(f"--epsilon must be in (0, 1]; got {epsilon}.")
        if trials < 2:
            raise IntrudimError(f"--trials must be ≥ 2 (a mean and a standard deviation are reported); got {trials}.")
        if out is not None:
            from intrudim.fileio import ensure_writable_directory

            ensure_writable_directory(out)
        with stderr.status("toy model: sweeping λ and sampling random vectors"):
            sweep = toy_lambda_sweep(n, k=k, epsilon=epsilon, seed=seed)
            ns = sorted({16, 64, 256, 768, 1024, 4096, n})
            baseline = random_vector_baseline(ns, trials=trials, seed=seed)
        paths: dict[str, Path] = {}
        if out is not None:
            from intrudim.report.analysis_report import write_toy_outputs

            paths = write_toy_outputs(sweep, baseline, out)
        if as_json:
            from intrudim.report.analysis_report import toy_payload

            sys.stdout.write(json.dumps(toy_payload(sweep, baseline), indent=2) + "\n")
            return
        table = terminal_table(f"W + λ·v vᵀ, n={n}, σ_max(W)={sweep.sigma_max:.3f} (Sec. 5)")
        for col in ("λ/σ_max", "v rank", "|cos(u,v)|", "theory", "max|cos| to W", f"intruders (top {k})"):
            table.add_column(col, justify="right", no_wrap=True)
        for p in sweep.points:
            table.add_row(f"{p.lam_over_sigma_max:g}", str(p.v_rank), f"{p.v_alignment:.3f}",
                          f"{p.v_alignment_theory:.3f}", f"{p.v_max_cos_to_base:.3f}",
                          str(p.intruders), style="bold red" if p.intruders else None)  # fmt: skip
        stdout.print(table)
        stdout.print(
            "u: the left singular vector of W + λ·v vᵀ most aligned with v; v rank: its rank among all n; theory: "
            "|cos(u,v)| as n → ∞; max|cos| to W: u against every left singular vector of W (an intruder below ε).",
            highlight=False,
        )
        for line in toy_findings(sweep):
            stdout.print(line, highlight=False)
        base_table = terminal_table("Random unit vector vs an orthonormal basis (App. C)")
        for col in ("n", "mean max|cos|", "√(2 ln 2n / n)", "1/√n"):
            base_table.add_column(col, justify="right")
        for p in baseline:
            base_table.add_row(str(p.n), f"{p.mean_max_cos:.4f}", f"{p.theory:.4f}", f"{p.minimum_possible:.4f}")
        stdout.print(base_table)
        if paths:
            stdout.print()
            print_lines(stdout, [f"report: {paths['html']}"])

    run_guarded(work)


def _register_training_commands() -> None:
    from intrudim.evaluate.commands import register as register_forgetting
    from intrudim.train.commands import register

    register(app)  # train, tasks, sweep (issue 4; docs/train.md)
    register_forgetting(app)  # forgetting (issue 13; docs/forgetting.md)
    from intrudim.repair.commands import register as register_repair

    register_repair(app)  # repair (docs/repair.md)
    from intrudim.experiments.continual_commands import register as register_continual
    from intrudim.experiments.demo_commands import register as register_demo
    from intrudim.scan.commands import register as register_scan

    register_continual(app)  # continual (issue 14; docs/continual.md)
    register_scan(app)  # scan (issue 15; docs/scan.md)
    register_demo(app)  # demo (issue 14; docs/demo.md)


_register_training_commands()


def main() -> None:
    # Everything imported so far (torch alone: some 200 000 container objects) lives until the process ends: keep it
    # out of the cyclic collector's passes, and above all out of the full collection at exit (~0.4 s of CPU per command).
    gc.freeze()
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
