"""Writing a forgetting measurement: forgetting.json and a small self-contained forgetting.html (atomically).

:func:`forgetting_section_html` renders the same section as an HTML fragment for other reports (repair
sweeps, the demo) to embed.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from intrudim.fileio import ensure_writable_directory, write_text_atomic
from intrudim.report.templating import environment, version


def _as_json(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else result.to_json()


def forgetting_section_html(result: Any) -> str:
    """The forgetting section (verdict, table, interval, text and licence) as an HTML fragment.

    ``result``: a :class:`~intrudim.evaluate.forgetting.ForgettingResult` or its ``to_json()`` dict.
    """
    data = _as_json(result)
    # The template is the page and the macro; making its module renders the page once, with this result.
    module = environment().get_template("forgetting.html").make_module(_page_context(data, command=""))
    return str(module.section(data))  # type: ignore[attr-defined]


def _page_context(data: dict[str, Any], *, command: str) -> dict[str, Any]:
    tuned = str(data.get("tuned_path") or "")
    return {
        "result": data, "title": Path(tuned).name or tuned or data.get("measure", ""), "version": version(),
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command or f"intrudim forgetting {data.get('base_path', '')} {tuned}",
    }  # fmt: skip


def write_forgetting_outputs(result: Any, out_dir: str | Path, *, command: str = "") -> dict[str, Path]:
    """Write forgetting.json and forgetting.html into ``out_dir``; return their paths."""
    out_dir = ensure_writable_directory(out_dir)
    data = _as_json(result)
    paths = {"json": write_text_atomic(out_dir / "forgetting.json", json.dumps(data, indent=2) + "\n")}
    html = environment().get_template("forgetting.html").render(_page_context(data, command=command))
    paths["html"] = write_text_atomic(out_dir / "forgetting.html", html)
    return paths
