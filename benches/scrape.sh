#!/usr/bin/env bash
# What the agent's scrape of model servers costs, per scrape_interval: a
# coordinator and one agent with 8 simulated GPUs run a model of 8 replicas
# (fixed count; demo model servers, whose /metrics page is vLLM's gauges and
# histograms), and for each interval in INTERVALS the script measures, over
# DURATION seconds once all 8 are ready, the CPU time of the agent and of the
# 8 servers together (utime + stime from /proc), and the bytes of one page.
#
#   benches/scrape.sh
#   INTERVALS="1s 500ms 250ms" DURATION=60 ROUNDS=3 benches/scrape.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

INTERVALS=${INTERVALS:-"1s 500ms 250ms"}
DURATION=${DURATION:-60}
ROUNDS=${ROUNDS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

work=$(mktemp -d /var/tmp/gpufleet-scrape.XXXXXX)
# Every process the runs start is written here (pid per line) so that the
# trap ends exactly those, whatever state a run dies in.
touch "$work/pids"
. benches/lib.sh
trap 'end_fleet "$work"' EXIT
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"
mkdir -p "$work/models"
head -c 1M /dev/zero >"$work/models/scrape-llm.bin"

PYTHONPATH="$root/benches" python3 - "$work" "$INTERVALS" "$DURATION" "$ROUNDS" <<'PY'
import json, os, statistics, subprocess, sys, time, urllib.request
from fleet import Fleet

work, intervals, duration, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4])
binary = os.path.join(work, "gpufleet")
hz = os.sysconf("SC_CLK_TCK")

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read()
    fields = f[f.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / hz

def one(interval, n):
    d = os.path.join(work, f"{interval}-{n}")
    fleet = Fleet(binary, os.path.join(work, "pids"), d, 8, [f"{work}/models"],
                  agent_extra=f'scrape_interval = "{interval}"\n')
    agent, cli = fleet.agent, fleet.cli
    fleet.apply(
        f'name = "scrape-llm"\nweights = "{work}/models/scrape-llm.bin"\nreplicas = 8\n[server]\npreset = "vllm"\n'
        f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}"]\n'
        f'gpus = 1\ngpu_memory = "20GiB"\n')
    reps = []
    for _ in range(300):
        reps = [r for r in cli("replica", "ls") or [] if r.get("state") == "ready"]
        if len(reps) == 8:
            break
        time.sleep(0.2)
    if len(reps) != 8:
        sys.exit(f"8 replicas not ready ({d})")
    servers = [r["pid"] for r in reps]
    page = len(urllib.request.urlopen(f"http://127.0.0.1:{reps[0]['port']}/metrics").read())
    time.sleep(5)
    a0, s0, t0 = cpu_s(agent.pid), sum(cpu_s(p) for p in servers), time.time()
    time.sleep(duration)
    a1, s1, t1 = cpu_s(agent.pid), sum(cpu_s(p) for p in servers), time.time()
    fleet.run("model", "delete", "scrape-llm")
    time.sleep(3)
    for p in open(os.path.join(work, "pids")).read().split():
        subprocess.run(["kill", p], capture_output=True)
    time.sleep(2)
    return {"interval": interval, "round": n, "page_bytes": page,
            "agent_cpu_pct": 100 * (a1 - a0) / (t1 - t0), "servers_cpu_pct": 100 * (s1 - s0) / (t1 - t0)}

results = []
for n in range(1, rounds + 1):
    for interval in intervals:
        r = one(interval, n)
        print(json.dumps(r), file=sys.stderr)
        results.append(r)

print(f"\n8 idle demo replicas, {duration} s per measurement, median of {rounds} rounds (interleaved)\n")
print("| scrape_interval | agent CPU (% of one core) | 8 servers' CPU (% of one core) | /metrics page (bytes) |")
print("|---|---|---|---|")
for interval in intervals:
    rs = [r for r in results if r["interval"] == interval]
    print(f"| {interval} | {statistics.median(r['agent_cpu_pct'] for r in rs):.2f} | "
          f"{statistics.median(r['servers_cpu_pct'] for r in rs):.2f} | {rs[0]['page_bytes']} |")
PY
