"""Analyse a LoRA adapter from the Hugging Face Hub: its intruder dimensions, in the terminal and as a report folder.

The adapter is given by its Hub id (``org/name`` or ``org/name@revision``); its base is the model the adapter
records (``base_model_name_or_path`` in its adapter_config.json), unless ``--base`` names another reference (a
Hub id, a local folder, or an embedded name such as ``smollm2``). Only the files the analysis reads are
downloaded (configs and safetensors weights, never pickles), into huggingface_hub's own cache; with
``HF_HUB_OFFLINE=1`` nothing is downloaded and both repos are read from that cache.

    python examples/analyze_hub_adapter.py someone/my-lora
    HF_HUB_OFFLINE=1 python examples/analyze_hub_adapter.py someone/my-lora@v1 --k 10 --epsilon 0.5 --out report/

The same from the command line: ``intrudim analyze someone/my-lora --out report/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import intrudim
from intrudim.report.analysis_report import write_analysis_outputs

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("adapter", help="the adapter's Hub id, org/name or org/name@revision")
parser.add_argument("--base", default=None, help="BASE (default: the base the adapter records)")
parser.add_argument("--k", type=int, default=10, help="top-k singular vectors of W_t examined (paper: 10)")
parser.add_argument("--epsilon", type=float, default=0.5, help="intruder if max |cos| to every base vector < ε")
parser.add_argument("--out", type=Path, default=None, help="report folder (default: report-<adapter name>)")
args = parser.parse_args()

try:
    result = intrudim.analyze(args.base, args.adapter, k=args.k, epsilon=args.epsilon, progress=True)
except intrudim.IntrudimError as error:  # a repo not in the cache offline, a gated repo, another base...
    sys.exit(f"error: {error}")
for line in result.summary_lines():
    print(line)

worst = sorted((m for m in result.matrices if m.intruders), key=lambda m: (-m.intruders, m.name))[:10]
print("\nmatrices with the most intruders:" if worst else "\nno matrix has an intruder dimension")
# ranks: which of the top-k singular vectors of W_t are new directions (#1: the largest σ)
for matrix in worst:
    ranks = ", ".join(f"#{rank}" for rank in matrix.intruder_ranks)
    print(f"  {matrix.name:50s} {matrix.intruders:3d}   ranks {ranks}")
per_type = {name: n for name, n in result.by_module_type().items() if n}
print("intruders per module type:", ", ".join(f"{name} {n}" for name, n in per_type.items()) or "none")

out = args.out or Path(f"report-{args.adapter.split('@')[0].replace('/', '--')}")
paths = write_analysis_outputs(result, out, command=f"intrudim analyze {args.adapter} --out {out}")
print(f"\nreport: {paths['html']}\njson: {paths['json']}\ncsv: {paths['csv']}")

