#!/usr/bin/env bash
# Runs the benchmarks N times (default 3) and prints, per benchmark, the median of
# criterion's median estimates across runs. Figures go into BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build-py-connector.sh >/dev/null
./scripts/build-js-connector.sh >/dev/null
runs=${1:-3}
# The wasm/native pairs of each run (the bench prints them on stderr), shown last.
paired=$(mktemp) err=$(mktemp)
trap 'rm -f "$paired" "$err"' EXIT
for i in $(seq "$runs"); do
  cargo bench --locked -p ebb --bench runtime -- --noplot >/dev/null 2>"$err" || { cat "$err" >&2; exit 1; }
  grep '^paired:' "$err" >>"$paired" || true
  find target/criterion -path '*/new/estimates.json' | while read -r f; do
    name=${f#target/criterion/}; name=${name%/new/estimates.json}
    python3 -c 'import json,sys; print(sys.argv[1], json.load(open(sys.argv[2]))["median"]["point_estimate"])' "$name" "$f"
  done
done | python3 -c '
import sys, statistics, collections
d = collections.defaultdict(list)
for line in sys.stdin:
    name, ns = line.split(); d[name].append(float(ns))
for name, xs in sorted(d.items()):
    m = statistics.median(xs)
    unit, div = ("ms", 1e6) if m >= 1e6 else ("us", 1e3)
    runs = ", ".join("%.3f" % (x / div) for x in xs)
    print("%-45s median %10.3f %s  (runs: %s)" % (name, m / div, unit, runs))
'
cat "$paired"
