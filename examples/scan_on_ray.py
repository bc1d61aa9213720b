"""Scan a folder of LoRA adapters of one base on a local Ray runtime, and print the leaderboard.

Every adapter the glob matches (PEFT folders, intrudim run directories, Trainer checkpoints) is analysed as
``intrudim analyze BASE ADAPTER`` would; the work is cut into units (one per base matrix SVD, one per adapter
matrix, one report per adapter) that run as Ray tasks on ``--workers`` CPUs, over one shared base SVD cache.
OUT gets ``leaderboard.html/.json/.csv`` and ``runs/<name>/`` with each adapter's report. Needs
``pip install 'intrudim[ray]'``.

    python examples/scan_on_ray.py smollm2 --glob 'adapters/*' --workers 4 --out scan/
    python examples/scan_on_ray.py org/base-model --glob 'out/checkpoint-*' --out scan/   # a run's checkpoints

The same from the command line: ``intrudim scan BASE --glob 'adapters/*' --ray --workers 4 --out scan/``; join an
existing cluster with ``--ray-address HOST:PORT`` (here: ``ScanConfig(engine="ray", ray_address=...)``).
"""

from __future__ import annotations

import argparse
import os

import intrudim
from intrudim.scan import ScanConfig, scan

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("base", nargs="?", default="smollm2", help="BASE: embedded name, folder or Hub id")
parser.add_argument("--glob", default="adapters/*", help="the adapters to scan (quote it for the shell)")
parser.add_argument("--workers", type=int, default=os.cpu_count(), help="Ray workers (CPUs) of the local runtime")
parser.add_argument("--k", type=int, default=10, help="top-k singular vectors examined (paper: 10)")
parser.add_argument("--epsilon", type=float, default=0.5, help="intruder if max |cos| to every base vector < ε")
parser.add_argument("--out", default="scan_out", help="an empty or new folder for the leaderboard")
args = parser.parse_args()

config = ScanConfig(analysis=intrudim.AnalyzeConfig(k=args.k, epsilon=args.epsilon), engine="ray",
                    ray_cpus=args.workers)
result = scan(args.base, [], args.out, config, pattern=args.glob, progress=True)

document = result.document
print(f"{len(result.rows)} adapters of {document['base']} (k={document['k']}, ε={document['epsilon']}), "
      f"on Ray with {document['ray_cpus']} workers in {document['seconds']:.1f} s")
print(f"{'#':>3s} {'adapter':30s} {'intruders':>9s} {'matrices':>8s} {'energy %':>8s}  worst matrix")
ranked = sorted(result.rows, key=lambda row: -(row["total_intruders"] or 0) if row["error"] is None else 1)
for place, row in enumerate(ranked, 1):
    if row["error"] is not None:
        print(f"{place:3d} {row['name']:30s} error: {row['error']}")
        continue
    found = f"{row['matrices_with_intruders']}/{row['matrices_analysed']}"
    print(f"{place:3d} {row['name']:30s} {row['total_intruders']:9d} {found:>8s} "
          f"{100 * row['energy_share_mean']:8.3f}  {row['worst_matrix'] or '-'}")
print(f"base SVD cache: {document['base_svd_cache']['hits']} hits, {document['base_svd_cache']['misses']} computed")
print(f"leaderboard: {result.paths.get('html', args.out)}")
