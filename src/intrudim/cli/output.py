"""How intrudim's terminal output looks: one table style, and summary lines wrapped between phrases."""

from __future__ import annotations

import re

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text


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
