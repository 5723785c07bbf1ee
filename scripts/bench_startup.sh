#!/usr/bin/env bash
# scripts/bench_startup.sh - how fast `optgate --version` and `optgate --help` start,
# against the interpreter alone (`python -c pass`), measured in the same invocation.
#
#   scripts/bench_startup.sh [--runs N]
#
# Each command runs N times (default 20) in turn with the baseline: farm-bench --vs
# (A B A B ..., the ratio taken pair by pair, so a drift of the machine's speed cancels
# out), else hyperfine (ratio of the medians). Prints each command's median wall time
# and its ratio to the baseline. Issue 13's bar: both start in under 0.3 s (they took
# about 0.6-1 s when every command module was imported to build the argument parser).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=20
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2;;
        *) sed -n '2,11p' "$0"; exit 2;;
    esac
done
PYTHON=$PWD/.venv/bin/python
OPTGATE=$PWD/.venv/bin/optgate
[ -x "$OPTGATE" ] || { echo "no $OPTGATE: set up the venv first (README)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"  # any directory: optgate reads nothing from the current one
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

for args in "--version" "--help"; do
    if command -v farm-bench >/dev/null; then
        report=$(farm-bench -n "$RUNS" --warmup 2 --vs "$PYTHON -c pass" -- "$OPTGATE" $args)
        wall=$(awk '$1 == "A" && $2 == "wall" { print $4 }' <<<"$report")
        base=$(awk '$1 == "B" && $2 == "wall" { print $4 }' <<<"$report")
        ratio=$(awk '$1 == "A/B" && $2 == "wall" { print $4 }' <<<"$report")
    elif command -v hyperfine >/dev/null; then
        json=$WORK/hyperfine.json
        hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$json" \
            "$OPTGATE $args" "$PYTHON -c pass" >/dev/null
        read -r wall base ratio < <("$PYTHON" -c '
import json, sys
a, b = (r["median"] for r in json.load(open(sys.argv[1]))["results"])
print(f"{a:.3f} {b:.3f} {a / b:.2f}")' "$json")
    else
        echo "neither farm-bench nor hyperfine is installed" >&2
        exit 2
    fi
    verdict=$(awk -v w="$wall" 'BEGIN { print (w < 0.3) ? "under 0.3 s" : "OVER 0.3 s" }')
    echo "optgate $args: median ${wall} s wall, python -c pass ${base} s; ratio ${ratio} ($verdict)"
done
