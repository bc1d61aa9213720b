"""The house stays walkable: every import (module-level or inside a function) points to a lower layer or stays in
its own package, no module imports itself back through others (no cycles), and no module is over ~400 lines
unless its docstring says why it is one piece.

The layer order is written once here and once in the README's "Layout" section (a test checks they agree).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "intrudim"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors",)),
    ("utilities", ("version", "fileio", "threads", "plain_progress", "side_by_side")),
    ("pure math", ("spectral",)),
    ("reading weights", ("weights",)),
    ("models and data", ("models", "tasks", "ray_runtime")),
    ("shared analysis steps", ("analysis",)),
    ("rendering", ("report",)),
    ("verbs", ("analyze", "evaluate")),
    ("verbs built on verbs", ("train", "repair", "scan")),
    ("integrations", ("integrations",)),
    ("experiments", ("experiments",)),
    ("command line", ("cli",)),
    ("package facade", ("__init__",)),
)
"""Lowest first. A module may import from its own unit (package or top-level module) or from a unit of a lower
layer; units of one layer do not import each other."""

MAX_LINES = 400
ONE_PIECE = re.compile(r"^One piece \(over 400 lines\): ", re.MULTILINE)


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_imports(package: Path) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (``import x``, ``from x import y`` where ``x.y`` may be a
    module, relative imports), at any depth of the file: module level, in functions, in ``try`` blocks."""
    top = package.name
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    imports: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module
                           for alias in node.names]  # fmt: skip
            else:
                continue
            for target in targets:
                if target == top or target.startswith(top + "."):
                    while target not in files and "." in target:
                        target = target.rpartition(".")[0]
                    if target != name:
                        found.add(target)
        imports[name] = found
    return imports


def unit_of(module: str) -> str:
    """The unit a module belongs to: ``intrudim.repair.core`` → ``repair``; ``intrudim`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(imports: dict[str, set[str]], layers=LAYERS) -> list[str]:
    rank = {unit: number for number, (_, units) in enumerate(layers) for unit in units}
    problems = []
    for module in sorted(imports):
        unit = unit_of(module)
        if unit not in rank:
            problems.append(f"{module}: its unit '{unit}' is in no layer (add it to LAYERS and the README's Layout)")
            continue
        for target in sorted(imports[module]):
            other = unit_of(target)
            if other == unit:
                continue
            if other not in rank:
                problems.append(f"{module} imports {target}, whose unit '{other}' is in no layer")
            elif rank[other] >= rank[unit]:
                where = "the same layer" if rank[other] == rank[unit] else "a higher layer"
                problems.append(f"{module} ({layers[rank[unit]][0]}) imports {target} ({where}: "
                                f"{layers[rank[other]][0]})")  # fmt: skip
    return problems


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in imports.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return cycles


def test_every_import_points_down_and_none_goes_round() -> None:
    imports = read_imports(PACKAGE)
    assert len(imports) > 100  # the whole package was read
    assert layer_violations(imports) == []
    assert import_cycles(imports) == []


def test_the_checks_find_a_planted_upward_import_and_cycle(tmp_path: Path) -> None:
    package = tmp_path / "intrudim"
    for relative, text in {
        "__init__.py": "",
        "errors.py": "",
        "spectral/__init__.py": "",
        "spectral/svd.py": "def f():\n    from intrudim.cli.common import x  # upward, lazily\n",
        "cli/__init__.py": "",
        "cli/common.py": "from . import app\n",
        "cli/app.py": "from intrudim.cli import common\nimport intrudim.errors\n",
    }.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    imports = read_imports(package)
    assert imports["intrudim.cli.app"] == {"intrudim.cli.common", "intrudim.errors"}
    problems = layer_violations(imports)
    assert len(problems) == 1 and problems[0].startswith("intrudim.spectral.svd (pure math) imports intrudim.cli.common")
    assert import_cycles(imports) == [["intrudim.cli.app", "intrudim.cli.common"]]


def test_every_unit_is_in_exactly_one_layer() -> None:
    units = [unit for _, members in LAYERS for unit in members]
    assert len(units) == len(set(units))
    present = {unit_of(module) for module in read_imports(PACKAGE)}
    assert present == set(units), (present - set(units), set(units) - present)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_why_it_is_one_piece(path: Path) -> None:
    text = path.read_text()
    lines = text.count("\n")
    if lines <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    head = "\n".join(docstring.split("\n\n")[:2])  # the first two paragraphs
    assert ONE_PIECE.search(head), (
        f"{path.relative_to(ROOT)} has {lines} lines: split it along its concerns, or say at the top of its "
        f"docstring 'One piece (over 400 lines): <why>'."
    )


def test_the_readme_states_the_same_layer_order() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    positions = []
    for _, units in LAYERS:
        for unit in units:
            shown = "intrudim/__init__.py" if unit == "__init__" else unit
            match = re.search(rf"`{re.escape(shown)}/?`", layout)
            assert match, f"the README's Layout section does not name `{shown}`"
            positions.append(match.start())
    assert positions == sorted(positions), "the README's Layout lists the layers in another order than LAYERS"
