"""The reports' Jinja environment, made once per process, and the version every report prints.

Every HTML report (analysis, toy, forgetting, repair, demo, regime) renders a template of ``report/templates``
through this one environment: it caches each compiled template (a scan writes one report per input, and compiling
analysis.html each time cost ~17 ms) and carries the filters the templates share.
"""

from __future__ import annotations

import functools

from jinja2 import Environment, PackageLoader, select_autoescape


def energy_share_percent(share: float) -> str:
    """An energy share (a fraction of ‖W_t‖²_F) as people read it: a percentage, e.g. ``0.34 %``."""
    value = 100 * share
    if value == 0:
        return "0 %"
    return "< 0.001 %" if value < 0.001 else f"{value:.3g} %"


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The reports' Jinja environment (``report/templates``, HTML autoescaped, the ``percent`` filter)."""
    made = Environment(loader=PackageLoader("intrudim", "report/templates"), autoescape=select_autoescape(["html"]))
    made.filters["percent"] = energy_share_percent
    return made


def version() -> str:
    """intrudim's version, as the reports print it."""
    from intrudim.version import __version__

    return __version__
