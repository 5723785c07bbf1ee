#!/usr/bin/env bash
# scripts/bench_relay.sh - optgate's relay throughput against the pass-through
# baseline, measured in the same invocation with the shared harness
# (../shared/bench/smtp_relay_bench.sh: smtp-source -> relay -> smtp-sink).
#
#   scripts/bench_relay.sh [-n N] [-s SESSIONS] [-r RCPTS] [-k 4k|50k] [--runs R] [--dkim rsa|ed25519]
#                          [--workers 1,2] [--affinity auto|none] [--store postgresql://...]
#                          [--nodes 1,2]
#
# Defaults: N=5000 messages, 20 sessions, 1 recipient, 4 KB, 3 runs (11 with
# --workers: a single worker's rate swings by half between runs). Each run
# of each relay gets a fresh sink; the harness prints the median msgs/s of
# each relay and this script the ratio optgate / pass-through (issue bar:
# >= 0.70 at 4 KB, 1 recipient, 20 sessions, no DKIM; >= 0.50 with --dkim rsa,
# where optgate signs every copy with a fresh RSA-2048 key for bench.example).
# optgate runs one worker here, as the pass-through relay is one process.
#
# --workers 1,2 compares `optgate serve --workers K` for each K instead (no
# pass-through), the runs of the counts interleaved, and prints each median
# against the first count's (issue bar: 2 workers >= 1.7x 1 worker on 2 cores),
# with optgate's CPU per message and the whole machine's: smtp-source and
# smtp-sink share the cores, which caps what a second worker can add. As the
# machine's speed drifts, it also prints the ratio of all runs' messages over all
# their time, and the median of the run-by-run ratios.
# --affinity passes `--cpu-affinity` on (default auto: with one worker per core,
# each is bound to its own; `none` leaves the placement to the kernel).
#
# --store URL puts the store in that (empty) PostgreSQL database instead of a
# SQLite file. --nodes 1,2 compares K separate `optgate serve` nodes sharing
# that store: K harness instances at once, each with its own source, node
# (one worker) and sink, N/K messages and S/K sessions each; the K nodes'
# rate is all N messages over the slowest instance's time.
# (scripts/bench_backends.py runs --store URL --nodes 1,2.)
#
# optgate runs with its real pipeline: a SQLite store holding 100,000
# suppressions (of other addresses), per-recipient lookup, policy, rewrite
# (personal List-Unsubscribe headers and footer), token signing, the send
# ledger, and JSON logging of every decision. Consent is not required here,
# because smtp-source invents its recipients; the consent query still runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
BENCH=${BENCH:-$REPO/../shared/bench}
[ -x "$BENCH/smtp_relay_bench.sh" ] || { echo "harness not found: set BENCH=DIR" >&2; exit 2; }

N=5000 S=20 M=1 K=4k RUNS="" DKIM="" WORKERS="" STORE="" NODES="" AFFINITY=auto
while [ $# -gt 0 ]; do
    case $1 in
        -n) N=$2; shift 2;; -s) S=$2; shift 2;; -r) M=$2; shift 2;;
        -k) K=$2; shift 2;; --runs) RUNS=$2; shift 2;; --dkim) DKIM=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;; --store) STORE=$2; shift 2;;
        --nodes) NODES=$2; shift 2;; --affinity) AFFINITY=$2; shift 2;;
        *) sed -n '2,39p' "$0"; exit 2;;
    esac
done
if [ -z "$RUNS" ]; then RUNS=3; [ -z "$WORKERS" ] || RUNS=11; fi
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

postfix stop >/dev/null 2>&1 || true
WORK=$(mktemp -d /tmp/optgate-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/results.jsonl

[ -n "$STORE" ] || STORE=sqlite:///$WORK/bench.db
# the store's audit chain is keyed with the tests' key: optgate serve gets it as a file
.venv/bin/python -c "import sys; from pathlib import Path; from tests.support.keys import AUDIT_KEY; p = Path(sys.argv[1]); p.write_text(AUDIT_KEY.hex()); p.chmod(0o600)" "$WORK/audit.key"
.venv/bin/python - "$STORE" <<'EOF'
import asyncio, sys
from tests.support.keys import AUDIT_KEY
from suppression.address import normalize
from suppression.model import ImportItem, Reason
from suppression.opening import open_store

async def seed(url: str) -> None:
    store = await open_store(url, audit_key=AUDIT_KEY)
    items = []
    for n in range(100_000):
        a = normalize(f"someone{n}@elsewhere.example")
        items.append(ImportItem(a.sha256, "sha256", a.normalized, Reason.UNSUBSCRIBED))
    await store.suppress(items, scope="global", source="import", actor="bench")
    await store.close()

asyncio.run(seed(sys.argv[1]))
EOF
# the audit log's key, as the store was seeded with (serve refuses a store chained with another)
.venv/bin/python -c "import sys; from tests.support.keys import AUDIT_KEY; open(sys.argv[1], 'w').write(AUDIT_KEY.hex())" "$WORK/audit.key"
chmod 600 "$WORK/audit.key"
# a SQLite store starts each run as seeded; PostgreSQL keeps the ledger of earlier runs
FRESH=""
if [ "$STORE" = "sqlite:///$WORK/bench.db" ]; then
    cp "$WORK/bench.db" "$WORK/pristine.db"
    FRESH="cp $WORK/pristine.db $WORK/bench.db && rm -f $WORK/bench.db-wal $WORK/bench.db-shm &&"
fi
DKIM_ENV=""
if [ -n "$DKIM" ]; then
    .venv/bin/python -c "import sys; from pathlib import Path; from gateway.keygen import generate, private_pem, write_private; write_private(Path(sys.argv[2]), private_pem(generate(sys.argv[1])))" "$DKIM" "$WORK/dkim.pem"
    DKIM_ENV="OPTGATE_DKIM_KEYS=bench.example:bench:$DKIM:$WORK/dkim.pem"
fi

# optgate_cmd K: the harness's relay command for optgate with K workers
optgate_cmd() {
    echo "$FRESH OPTGATE_SMTP_LISTEN=127.0.0.1:{RELAY_PORT} OPTGATE_RELAY_NEXT_HOP=127.0.0.1:{SINK_PORT} \
OPTGATE_STORE_URL=$STORE OPTGATE_POLICY_REQUIRE_CONSENT=false $DKIM_ENV \
OPTGATE_UNSUBSCRIBE_KEY_FILE=$WORK/key OPTGATE_STORE_AUDIT_KEY_FILE=$WORK/audit.key \
OPTGATE_STORE_AUDIT_ANCHOR_FILE=$WORK/audit.head exec $REPO/.venv/bin/optgate serve --only smtp --workers $1 --cpu-affinity $AFFINITY"
}
PASS_CMD="exec $REPO/.venv/bin/python $BENCH/passthrough_relay.py --listen-port {RELAY_PORT} --next-port {SINK_PORT}"

# harness LABEL CMD RUNS SKIP_DIRECT [N S PORT]: one harness invocation, runs appended to RESULTS
harness() {
    RELAY_CMD=$2 LABEL=$1 RESULTS=$RESULTS SKIP_DIRECT=$4 RELAY_PORT=${7:-2525} \
        SINK_PORT=$((${7:-2525} + 1)) "$BENCH/smtp_relay_bench.sh" -n "${5:-$N}" -s "${6:-$S}" \
        -r "$M" -k "$K" --runs "$3" | grep -v '^RUN ' \
        || true  # with -r > 1 the harness counts optgate's per-recipient copies as a failure
}

if [ -n "$NODES" ]; then
    LABELS=""
    for k in ${NODES//,/ }; do LABELS="$LABELS nodes-$k"; done
    for run in $(seq 1 "$RUNS"); do
        for k in ${NODES//,/ }; do
            echo "=== $k optgate node(s) on $STORE: run $run of $RUNS, N=$N S=$S M=$M K=$K"
            for node in $(seq 1 "$k"); do
                harness "nodes-$k-run$run" "$(optgate_cmd 1)" 1 1 $((N / k)) $((S / k)) \
                    $((2515 + 10 * node)) > "$WORK/node-$node.out" &
            done
            wait
            cat "$WORK"/node-*.out && rm -f "$WORK"/node-*.out
        done
    done
elif [ -z "$WORKERS" ]; then
    echo "=== passthrough: N=$N S=$S M=$M K=$K runs=$RUNS"
    harness passthrough "$PASS_CMD" "$RUNS" 0
    echo "=== optgate (1 worker): N=$N S=$S M=$M K=$K runs=$RUNS"
    harness optgate "$(optgate_cmd 1)" "$RUNS" 1
    LABELS="passthrough optgate"
else
    LABELS=""
    for k in ${WORKERS//,/ }; do LABELS="$LABELS workers-$k"; done
    for run in $(seq 1 "$RUNS"); do
        for k in ${WORKERS//,/ }; do
            echo "=== optgate --workers $k: run $run of $RUNS, N=$N S=$S M=$M K=$K"
            harness "workers-$k" "$(optgate_cmd "$k")" 1 1
        done
    done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# shellcheck disable=SC2086 # LABELS is a list
PAIRED=single
[ -z "$WORKERS$NODES" ] || PAIRED=paired
.venv/bin/python - "$RESULTS" "$M" "$PAIRED" $LABELS <<'EOF'
# Every relay answers 250 only after the next hop accepted the message, so the
# source's own rate (accept_msgs_per_s) is the end-to-end rate. It is used here
# because optgate relays one personal copy per recipient: with -r 10 the sink
# counts ten transactions per message, which the harness's table (built for
# relays that forward one transaction) reports as FAIL.
import json, statistics, sys
path, rcpts, paired_flag, base, *others = sys.argv[1:]
paired = paired_flag == "paired"  # the runs of the labels alternate (--workers, --nodes)
runs: dict[str, list[dict[str, float]]] = {}
together: dict[str, list[dict[str, float]]] = {}  # nodes-K-runR: K instances of one run
for line in open(path):
    row = json.loads(line)
    if row["mode"] == "direct" or row["rc"] != 0 or row["delivered"] < row["n"]:
        continue
    if "-run" in row["label"]:
        together.setdefault(row["label"], []).append(row)
    else:
        runs.setdefault(row["label"], []).append(row)
for label, rows in together.items():  # K instances at once: all messages over the slowest
    n, wall = sum(r["n"] for r in rows), max(r["n"] / r["accept_msgs_per_s"] for r in rows)
    merged = {
        "accept_msgs_per_s": n / wall,
        "relay_cpu_us_per_msg": sum(r["relay_cpu_s"] for r in rows) / n * 1e6,
        "machine_cpu_us_per_msg": max(r["machine_busy_s"] for r in rows) / n * 1e6,
    }
    runs.setdefault(label.split("-run")[0], []).append(merged)

def median(label: str, field: str) -> float:
    return statistics.median(float(r[field]) for r in runs[label])

def pooled(label: str) -> float:
    """Every run's messages over every run's time."""
    n = len(runs[label])  # each run: the same N
    return n / sum(1 / float(r["accept_msgs_per_s"]) for r in runs[label])

print({k: [round(r["accept_msgs_per_s"], 1) for r in rs] for k, rs in runs.items()})
for label in (base, *others):
    print(f"{label}: {median(label, 'accept_msgs_per_s'):.0f} msgs/s, relay CPU "
          f"{median(label, 'relay_cpu_us_per_msg'):.0f} us/msg, whole machine "
          f"{median(label, 'machine_cpu_us_per_msg'):.0f} us/msg (medians)")
for label in others:
    ours, theirs = median(label, "accept_msgs_per_s"), median(base, "accept_msgs_per_s")
    print(f"rcpts={rcpts}: {label} / {base} = {ours / theirs:.2f}  "
          f"({ours:.0f} vs {theirs:.0f} msgs/s, medians)")
    if paired and len(runs[label]) == len(runs[base]):  # interleaved: run r of each together
        ratios = sorted(a["accept_msgs_per_s"] / b["accept_msgs_per_s"]
                        for a, b in zip(runs[label], runs[base]))
        print(f"  all runs together: {pooled(label) / pooled(base):.2f} (all messages over all "
              f"the time); run by run: median {statistics.median(ratios):.2f}, "
              f"from {ratios[0]:.2f} to {ratios[-1]:.2f} ({len(ratios)} pairs)")
EOF
