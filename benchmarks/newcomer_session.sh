#!/bin/bash
# The newcomer session (issue "What a user sees"): every verb on the adapters of newcomer_adapters.py, as a user
# types them, at 80 columns, output to files (not a terminal): read OUT/out/*.txt and open every report in a browser.
#   bash benchmarks/newcomer_session.sh OUT
set -u
OUT=$(realpath "${1:-newcomer}")
export HF_HUB_OFFLINE=1 COLUMNS=80
INTRUDIM=${INTRUDIM:-intrudim}
cd "$OUT" && rm -rf out && mkdir out
run() { echo "\$ intrudim $*"; /usr/bin/time -f "[%e s]" "$INTRUDIM" "$@"; echo "[exit $?]"; echo; }
run analyze adapters/r1 smollm2 > out/01_swapped.txt 2>&1
run analyze smollm2 adapters/r1 --out out/a1 > out/02_analyze_r1.txt 2>&1
run analyze adapters/r8 --out out/a8 > out/03_analyze_r8.txt 2>&1
run repair smollm2 adapters/r1 --out out/rep1 > out/04_repair.txt 2>&1
run repair adapters/r1 --out out/rep1m --merged > out/05_repair_merged.txt 2>&1
run forgetting smollm2 adapters/r1 --out out/f1 --max-tokens 4000 > out/06_forgetting.txt 2>&1
run repair smollm2 adapters/r1 --sweep --control all --out out/sw0 > out/07a_sweep_typo.txt 2>&1
run repair smollm2 adapters/r1 --sweep 0,0.25,0.5,0.75,1 --control all --out out/sw1 --text news --max-tokens 4000 \
    > out/07_sweep.txt 2>&1
run scan smollm2 adapters/r1 adapters/r2 adapters/r8 --out out/scan > out/08_scan.txt 2>&1
ls out
