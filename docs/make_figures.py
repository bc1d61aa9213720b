"""Draw the figures the README and the documentation show, with intrudim's own analysis and figure code.

    python docs/make_figures.py                      # MiniLM (embedded), offline, ~30 s on 2 cores
    python docs/make_figures.py --base PATH --out DIR

It builds a PEFT LoRA adapter with planted rank-1 intruders on BASE (:mod:`intrudim.experiments.planted`: every other
layer's update is one random direction of singular value 1.5·σ₁(W₀)), analyses it with ``intrudim.analyze`` and
saves the Fig. 1/3 similarity heatmap of the matrix the HTML report would show first
(:func:`intrudim.report.figures.highlighted_matrices`) as ``OUT/similarity_heatmap.png``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEATMAP = "similarity_heatmap.png"


def make_figures(base: str = "minilm", out: str | Path = HERE / "images") -> list[Path]:
    """Write the figures into ``out``; return their paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import intrudim
    from intrudim.experiments.planted import build_planted_adapter
    from intrudim.report.figures import highlighted_matrices, similarity_heatmap_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="intrudim-figures-") as work:
        adapter = build_planted_adapter(base, Path(work) / "adapter", seed=0)
        result = intrudim.analyze(base, adapter, cache_dir=Path(work) / "svd_cache")
    matrix = highlighted_matrices(result.matrices, 1)[0]
    figure = similarity_heatmap_figure(matrix, result.epsilon)
    path = out / HEATMAP
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})  # no version: same bytes each run
    print(f"{path}: {matrix.name}, intruder ranks {matrix.intruder_ranks} ({result.summary_lines()[0]})")
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="minilm", help="BASE model reference (default: the embedded MiniLM)")
    parser.add_argument("--out", default=str(HERE / "images"), help="output folder (default: docs/images)")
    args = parser.parse_args()
    make_figures(args.base, args.out)


if __name__ == "__main__":
    main()
