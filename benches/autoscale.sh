#!/usr/bin/env bash
# Autoscaling reaction with the real fleet: a coordinator (tick = 1s) and one
# agent with 4 simulated GPUs (defaults otherwise: report_interval 1s), a model
# whose replicas are demo model servers reading WEIGHTS at start ([scaling]
# min 1, max 4, target_ongoing_requests 4, stable_window 30s, panic_window 6s).
# scrape_interval SCRAPE_INTERVAL (default: the agent's, 500ms).
# Once one replica is ready, the load steps from 0 to RPS requests/s
# (`gpufleet demo load`); the script polls `replica ls` every 200 ms and reads
# `events` afterwards, and reports
#   step -> decision        first `scale` event "1 → N" after the step,
#   step -> replica ready   first new replica seen "ready".
# Modes, RUNS fresh fleets each (default 3):
#   warm   [warm] mode = "standby"; the weights stay cached from the first replica
#   cold   [warm] mode = "off"; the weights are evicted (vmtouch -e, checked 0%)
#          after the first replica is ready, so new replicas read them cold
#
#   benches/autoscale.sh
#   MODES=cold RUNS=5 WEIGHTS=/srv/models/big.bin benches/autoscale.sh
#   TICK=200ms REPORT_INTERVAL=200ms benches/autoscale.sh   # faster periods
# Also printed per run: when the coordinator first saw ongoing > 0 after the
# step, and its per-tick ongoing until the decision (from `gpufleet explain`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

WEIGHTS=${WEIGHTS:-/var/tmp/gpufleet-bench2/server-weights.bin}
RUNS=${RUNS:-3}
MODES=${MODES:-"warm cold"}
TICK=${TICK:-1s}
REPORT_INTERVAL=${REPORT_INTERVAL:-1s}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-500ms}
RPS=${RPS:-25}
LOAD_FOR=${LOAD_FOR:-40}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
. benches/lib.sh
need vmtouch
[ -f "$WEIGHTS" ] || { echo "no weights at $WEIGHTS (benches/coldstart.sh makes one)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/gpufleet-autoscale.XXXXXX)
# Every process the runs start is written here (pid per line) so that the
# trap ends exactly those, whatever state a run dies in.
touch "$work/pids"
trap 'end_fleet "$work"' EXIT
cargo build --release --quiet
# The shared target dir may be rewritten by other builds: use a copy.
cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"

PYTHONPATH="$root/benches" python3 - "$work" "$WEIGHTS" "$RUNS" "$MODES" "$RPS" "$LOAD_FOR" "$TICK" "$REPORT_INTERVAL" "$SCRAPE_INTERVAL" <<'PY'
import json, os, re, statistics, subprocess, sys, time
from fleet import Fleet, spawn

work, weights, runs, modes, rps, load_for, tick, report, scrape = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5], int(sys.argv[6]), sys.argv[7], sys.argv[8], sys.argv[9]
binary = os.path.join(work, "gpufleet")
pidfile = os.path.join(work, "pids")

def resident_pct():
    out = subprocess.run(["vmtouch", weights], capture_output=True, text=True).stdout
    return float(re.search(r"Resident Pages:.* ([0-9.]+)%", out).group(1))

def ts(e):
    return e["time_unix_ms"] / 1000

def one_run(mode, n):
    d = os.path.join(work, f"{mode}-{n}")
    os.makedirs(d)
    fleet = Fleet(binary, pidfile, d, 4, [os.path.dirname(weights)],
                  coordinator_extra=f'tick = "{tick}"\n',
                  agent_extra=f'report_interval = "{report}"\nscrape_interval = "{scrape}"\n')
    cli, http = fleet.cli, fleet.http
    warm = "standby" if mode == "warm" else "off"
    fleet.apply(
        f'name = "bench-llm"\nweights = "{weights}"\n[server]\npreset = "vllm"\n'
        f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}"]\n'
        f'gpus = 1\ngpu_memory = "20GiB"\nready_timeout = "120s"\nstop_timeout = "10s"\n'
        f'[scaling]\nmin_replicas = 1\nmax_replicas = 4\ntarget_ongoing_requests = 4\n'
        f'stable_window = "30s"\npanic_window = "6s"\nscale_down_delay = "60s"\n[warm]\nmode = "{warm}"\n')
    first = None
    for _ in range(600):
        reps = cli("replica", "ls") or []
        ready = [x for x in reps if x.get("state") == "ready"]
        if ready:
            first = {x["id"] for x in reps}
            break
        time.sleep(0.2)
    if first is None:
        sys.exit(f"no replica ready in 120 s ({d})")
    if mode == "cold":
        subprocess.run(["sync"])
        subprocess.run(["vmtouch", "-e", "-q", weights], check=True)
        if resident_pct() != 0:
            sys.exit(f"eviction left {resident_pct()}% of {weights} resident")
    # Let the replica's idle signals reach the coordinator before the step.
    time.sleep(5)
    res_before = resident_pct()
    step = time.time()
    load = spawn(pidfile, [binary, "demo", "load", "--model", "bench-llm", "--coordinator-http", f"http://127.0.0.1:{http}",
                  "--rps", rps, "--duration", f"{load_for}s", "-o", "json"], f"{d}/load.json")
    ready_at = {}
    while load.poll() is None:
        now = time.time()
        for x in cli("replica", "ls") or []:
            if x["id"] not in first and x.get("state") == "ready" and x["id"] not in ready_at:
                ready_at[x["id"]] = now - step
        time.sleep(0.2)
    events = cli("events", "--model", "bench-llm", "--limit", "1000") or []
    decision = None
    for e in sorted(events, key=ts):
        if e.get("kind") == "scale" and ts(e) >= step and re.match(r"\s*1 → ", e.get("message", "")):
            decision = (ts(e) - step, e["message"])
            break
    # The coordinator's own per-tick view: when did it first see the load, and
    # what did the windows hold until the decision?
    expl = cli("explain", "bench-llm") or {}
    ticks = [(p["time_unix_ms"] / 1000 - step, p["ongoing"]) for p in expl.get("signals", [])]
    seen = next((t for t, o in ticks if t >= 0 and o > 0), None)
    until = decision[0] if decision else 0
    ongoing_ticks = [f"{t:.1f}:{o:.0f}" for t, o in ticks if -1 <= t <= until + 0.5]
    fleet.run("model", "delete", "bench-llm")
    time.sleep(3)
    return {"mode": mode, "run": n, "resident_pct_at_step": res_before,
            "decision_s": decision[0] if decision else None, "decision": decision[1] if decision else None,
            "first_seen_s": seen, "ongoing_by_tick": ongoing_ticks,
            "first_ready_s": min(ready_at.values()) if ready_at else None,
            "new_replicas_ready_s": sorted(round(v, 2) for v in ready_at.values()),
            "load": open(f"{d}/load.json").read().strip()[:300]}

results = []
for n in range(1, runs + 1):
    for mode in modes:
        r = one_run(mode, n)
        print(json.dumps(r, ensure_ascii=False), file=sys.stderr)
        results.append(r)
        # End this fleet (and any replica its agent left) before the next one.
        for p in open(pidfile).read().split():
            subprocess.run(["kill", p], capture_output=True)
        time.sleep(2)
        for line in subprocess.run(["pgrep", "-f", f"^{binary} demo server"], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", line], capture_output=True)
        time.sleep(1)

def med(xs):
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):.2f}" if xs else "n/a"
print(f"\nstep 0 → {rps} req/s; median of {runs} runs per mode\n")
print("| mode | step → coordinator sees load (s) | step → scale decision (s) | step → first new replica ready (s) | all runs: decision / first ready (s) |")
print("|---|---|---|---|---|")
for mode in modes:
    rs = [r for r in results if r["mode"] == mode]
    runs_txt = ", ".join(f"{r['decision_s']:.2f} / {r['first_ready_s']:.2f}" if r["decision_s"] is not None and r["first_ready_s"] is not None else "missing" for r in rs)
    print(f"| {mode} | {med(r.get('first_seen_s') for r in rs)} | {med(r['decision_s'] for r in rs)} | {med(r['first_ready_s'] for r in rs)} | {runs_txt} |")
PY
