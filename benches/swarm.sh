#!/usr/bin/env bash
# One coordinator carrying a swarm of simulated agents (`gpufleet bench
# swarm`), at each size in SIZES (agents:models), RUNS times each, every run
# on a fresh coordinator (empty data dir, tick 1s, limits raised for the
# swarm's one source address). Per run the swarm connects, applies the models
# (agents × REPLICAS_PER_NODE replicas, spread), waits until every replica is
# ready, then measures DURATION: report round trip, scale-up to agent, the
# coordinator's CPU, RSS, tick and report-handling p99 (from its /metrics),
# and its own CPU. After the swarm ends its nodes stay listed (disconnected):
# `node ls` and `gpu ls` are timed then, CLI_CALLS times each (p50).
# Printed: one JSON line per run, then medians per size.
#
#   benches/swarm.sh
#   SIZES="1000:100 5000:500" RUNS=3 DURATION=30s benches/swarm.sh
#   SIZES="10000:500" CONNECT_RATE=250 BINARY=target/release/gpufleet benches/swarm.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

SIZES=${SIZES:-"1000:100 1000:500 5000:100 5000:500 10000:500"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-30s}
GPUS=${GPUS:-8}
REPLICAS_PER_NODE=${REPLICAS_PER_NODE:-1}
CLI_CALLS=${CLI_CALLS:-10}
CONNECT_RATE=${CONNECT_RATE:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

work=$(mktemp -d /var/tmp/gpufleet-swarm.XXXXXX)
if [ -n "${BINARY:-}" ]; then
    cp "$BINARY" "$work/gpufleet"
else
    cargo build --release --quiet --bin gpufleet
    cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"
fi
coordinator=""
cleanup() {
    [ -n "$coordinator" ] && kill "$coordinator" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

results="$work/results.jsonl"
for size in $SIZES; do
    agents=${size%%:*}
    models=${size##*:}
    for run in $(seq 1 "$RUNS"); do
        d="$work/$agents-$models-$run"
        mkdir -p "$d"
        cat >"$d/coordinator.toml" <<EOF
listen = "127.0.0.1:17460"
http_listen = "127.0.0.1:17461"
data_dir = "$d/data"
tick = "1s"
[limits]
max_connections = 30000
max_connections_per_peer = 30000
max_agent_sessions = 30000
EOF
        "$work/gpufleet" coordinator --config "$d/coordinator.toml" >"$d/coordinator.log" 2>&1 &
        coordinator=$!
        for _ in $(seq 50); do
            "$work/gpufleet" --coordinator http://127.0.0.1:17460 node ls >/dev/null 2>&1 && break
            sleep 0.2
        done
        load=$(cut -d' ' -f1 /proc/loadavg)
        "$work/gpufleet" --coordinator http://127.0.0.1:17460 --request-timeout 60s \
            -o json bench swarm --connect-rate "$CONNECT_RATE" --settle-timeout 10m \
            --agents "$agents" --gpus "$GPUS" --replicas-per-node "$REPLICAS_PER_NODE" \
            --models "$models" --duration "$DURATION" \
            --metrics http://127.0.0.1:17461/metrics >"$d/swarm.json" 2>"$d/swarm.log" \
            || { cat "$d/swarm.log" "$d/coordinator.log" >&2; exit 1; }
        cli_ms() {
            python3 - "$work/gpufleet" "$CLI_CALLS" "$@" <<'PY'
import statistics, subprocess, sys, time
binary, calls, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
t = []
for _ in range(calls):
    s = time.monotonic()
    subprocess.run([binary, "--coordinator", "http://127.0.0.1:17460", *args],
                   stdout=subprocess.DEVNULL, check=True)
    t.append((time.monotonic() - s) * 1000)
print(round(statistics.median(t), 1))
PY
        }
        node_ls=$(cli_ms node ls)
        gpu_ls=$(cli_ms gpu ls)
        kill "$coordinator"
        wait "$coordinator" 2>/dev/null || true
        coordinator=""
        python3 - "$d/swarm.json" "$load" "$node_ls" "$gpu_ls" "$run" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.update(load_before=float(sys.argv[2]), node_ls_p50_ms=float(sys.argv[3]),
         gpu_ls_p50_ms=float(sys.argv[4]), run=int(sys.argv[5]))
print(json.dumps(r))
PY
        tail -1 "$results"
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["agents_registered", "replicas_ready", "coordinator_cpu_pct", "coordinator_rss_bytes",
        "tick_p99_ms", "report_handling_p99_ms", "report_rtt_p50_ms", "report_rtt_p99_ms",
        "assignment_latency_p50_ms", "assignment_latency_p99_ms", "session_setup_per_s",
        "settle_s", "node_ls_p50_ms", "gpu_ls_p50_ms", "swarm_cpu_pct_per_1k_agents",
        "load_before"]
sizes = {}
for r in rows:
    sizes.setdefault((r["agents"], r["models"]), []).append(r)
for (agents, models), runs in sorted(sizes.items()):
    med = {}
    for k in keys:
        v = [r[k] for r in runs if r.get(k) is not None]
        med[k] = round(statistics.median(v), 2) if v else None
    per_1k = {k: round(med[k] / agents * 1000, 2) for k in ["coordinator_cpu_pct"] if med[k] is not None}
    print(json.dumps({"agents": agents, "models": models, "runs": len(runs), **med,
                      "coordinator_cpu_pct_per_1k_agents": per_1k.get("coordinator_cpu_pct")}))
PY
