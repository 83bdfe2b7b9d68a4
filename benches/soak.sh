#!/usr/bin/env bash
# Soak: the demo fleet (a coordinator, two agents, demo model servers) under
# varying load for DURATION (default 30m); samples the RSS of the coordinator
# and the agents every 10 s and reports whether it stays flat (median of the
# first 5 minutes vs the last 5 minutes). Not part of CI.
#
#   benches/soak.sh                 # 30 minutes
#   DURATION=10m benches/soak.sh
#
# Output: a CSV of samples (soak-rss.csv in the work dir) and a markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-30m}
PORT=${PORT:-7560}
work=$(mktemp -d /var/tmp/gpufleet-soak.XXXXXX)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --quiet
bin="$target/release/gpufleet"

secs=$(python3 -c "import re,sys;d='$DURATION';m=re.fullmatch(r'(\d+)([smh])',d);print(int(m[1])*{'s':1,'m':60,'h':3600}[m[2]])")

"$bin" demo --dir "$work/fleet" --port "$PORT" --duration "${secs}s" --weights-size 64MiB >"$work/demo.out" 2>&1 &
demo=$!
cleanup() { kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; }
trap cleanup EXIT

# Wait for the fleet and the demo model.
for _ in $(seq 1 120); do
    if "$bin" model ls --coordinator "http://127.0.0.1:$PORT" -o json 2>/dev/null | grep -q '"ready_replicas": [1-9]'; then break; fi
    sleep 1
done

pids() { # name pid, for the coordinator and the agents the demo started
    pgrep -f "$bin coordinator --config $work/fleet" | sed 's/^/coordinator /'
    for a in $(pgrep -f "$bin agent --config $work/fleet"); do
        echo "agent-$(tr '\0' ' ' </proc/$a/cmdline | sed -n 's#.*agents/\([^/]*\)/agent.toml.*#\1#p') $a"
    done
}

echo "t_s,process,rss_kib" >"$work/soak-rss.csv"
start=$(date +%s)
# Load varies: 5, 15, 30, 10 requests/s in 60 s phases, round and round.
(
    rates=(5 15 30 10)
    i=0
    while kill -0 "$demo" 2>/dev/null && (($(date +%s) - start < secs - 70)); do
        "$bin" demo load --model demo-llm --coordinator-http "http://127.0.0.1:$((PORT + 1))" \
            --rps "${rates[$((i % 4))]}" --duration 60s -o json >>"$work/load.jsonl" 2>/dev/null || true
        i=$((i + 1))
    done
) &
loader=$!
while kill -0 "$demo" 2>/dev/null; do
    t=$(($(date +%s) - start))
    while read -r name pid; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n $rss ]] && echo "$t,$name,$rss" >>"$work/soak-rss.csv"
    done < <(pids)
    sleep 10
done
wait "$loader" 2>/dev/null || true

python3 - "$work/soak-rss.csv" "$secs" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
total = int(sys.argv[2])
by = {}
for r in rows:
    by.setdefault(r["process"], []).append((int(r["t_s"]), int(r["rss_kib"])))
print("| process | RSS first 5 min (MiB, median) | RSS last 5 min (MiB, median) | max (MiB) | change |")
print("|---|---|---|---|---|")
for p, s in sorted(by.items()):
    first = [v for t, v in s if t < 300] or [s[0][1]]
    last = [v for t, v in s if t >= total - 300] or [s[-1][1]]
    a, b = statistics.median(first) / 1024, statistics.median(last) / 1024
    print(f"| {p} | {a:.1f} | {b:.1f} | {max(v for _, v in s)/1024:.1f} | {100*(b-a)/a:+.1f}% |")
PY
sent=$(python3 -c "import json,sys;r=[json.loads(l) for l in open('$work/load.jsonl') if l.strip()];print(sum(x['sent'] for x in r), sum(x['failed'] for x in r))" 2>/dev/null || echo "? ?")
echo
echo "requests sent, failed: $sent"
echo "samples: $work/soak-rss.csv"
