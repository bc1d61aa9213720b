"""The documentation site builds with ``mkdocs build --strict`` (what ``make docs`` runs), offline, and a broken link,
anchor or API reference fails that build: ``make test`` catches a broken page like a broken test. The tools (mkdocs,
mkdocs-material, mkdocstrings) are in the ``dev`` extra that ``make test`` installs; without them these tests fail
rather than skip."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HF_HUB_OFFLINE="1")  # no --quiet: it hides the warnings --strict counts
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def copy_of_the_project(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ copied (to plant errors in), the sources they read linked."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs")
    for shared in ("src", "benchmarks"):
        (project / shared).symlink_to(ROOT / shared)
    return project


def test_the_site_builds_strictly_with_the_api_reference_from_the_docstrings(tmp_path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("intrudim.analyze.analyze", "intrudim.analyze.AnalyzeConfig", "intrudim.evaluate.forgetting_api.forgetting",
                 "intrudim.repair.config.RepairConfig", "intrudim.scan.config.ScanConfig", "intrudim.train.config.TrainConfig",
                 "intrudim.integrations.callback.IntruderCallback", "intrudim.analysis.results.AnalysisResult"):  # fmt: skip
        assert name in reference, f"the API reference lacks {name}"
    assert "Sec. 4, Definition 1" in reference  # parameter docs come from the docstrings
    results = (tmp_path / "site" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "Benchmark results" in results and "bench_structured.py" in results  # RESULTS.md included, one source
    pages = {p.relative_to(tmp_path / "site").parts[0] for p in (tmp_path / "site").rglob("index.html")}
    for page in ROOT.joinpath("docs").glob("*.md"):
        assert page.stem == "index" or page.stem in pages, f"docs/{page.name} is not built (missing from nav?)"
    html = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html"))
    assert "fonts.googleapis.com" not in html  # self-contained: nothing fetched when the site is read offline


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    project = copy_of_the_project(tmp_path)
    page = project / "docs" / "toy.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [a page](no-such-page.md) and [a section](analyze.md#no-such-section).\n",
                    encoding="utf-8")  # fmt: skip
    done = build(project, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr and "no-such-section" in done.stderr, done.stderr


def test_a_broken_api_reference_fails_the_build(tmp_path):
    project = copy_of_the_project(tmp_path)
    page = project / "docs" / "reference.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n::: intrudim.analyze.no_such_function\n", encoding="utf-8")
    done = build(project, tmp_path / "site")
    assert done.returncode != 0
    assert "no_such_function" in done.stdout + done.stderr


def _resolves(dotted: str) -> bool:
    """``intrudim.a.b.c`` names a module or an attribute of one (the source is being reorganised: docs must follow)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                target = getattr(target, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_intrudim_name_and_import_in_the_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named: dict[str, str] = {}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for dotted in re.findall(r"\bintrudim(?:\.[A-Za-z_]\w*)+", text):
            named.setdefault(dotted, page.name)
        for module, names in re.findall(r"^\s*from (intrudim[\w.]*) import ([\w, ]+)", text, flags=re.M):
            for name in filter(None, (n.strip() for n in names.split(","))):
                named.setdefault(f"{module}.{name}", page.name)
    assert len(named) > 20
    missing = sorted(f"{dotted} ({page})" for dotted, page in named.items() if not _resolves(dotted))
    assert not missing, f"the docs name what does not exist: {missing}"
