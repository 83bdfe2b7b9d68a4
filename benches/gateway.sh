#!/usr/bin/env bash
# The gateway next to going straight to a replica, on one machine (loopback).
#
# overhead   one replica of the demo model server that answers at once
#            (--token-time 1ms --tokens 1, 256 at a time); `gpufleet demo
#            load` sends RPS_LOW and then RPS_HIGH requests/s for LOAD_FOR
#            seconds, once straight to the replica (--url) and once through
#            a gateway (--gateway), alternating, RUNS times each. Reported:
#            median p50 / p90 latency and completions per second. Then the
#            most it sustains: wrk with CONNS connections sending back to
#            back for LOAD_FOR s, straight and through the gateway,
#            alternating, RUNS times each; median requests/s and the ratio,
#            and the gateway's CPU time per request (its process's user +
#            system time over the run / requests done).
#            PIN=1 gives the gateway a core of its own (CPU 1) and puts the
#            load generator and the replica on CPU 0, on both paths: the
#            gateway as on its own host, not taking the replica's CPU.
#            RPS_LOW=0 RPS_HIGH=0 leave out the latency loads.
#            BASELINE=PATH also runs a gateway from another gpufleet binary
#            (an older build) on the same fleet, measured in the same
#            rotation as the other two paths (A/B on one replica).
#            GATEWAY_THREADS=N gives the gateways N runtime worker threads
#            (TOKIO_WORKER_THREADS; default one per CPU).
#            TOKEN_TIME (1ms) is how long the replica takes per request: the
#            default is the worst case for a proxy; a longer one is nearer
#            an engine, whose requests take milliseconds to seconds.
#            NGINX=1 also puts nginx (one worker per CPU, kept-alive upstream
#            connections, access log off) in front of the same replica and
#            measures it in the same rotation: the proxy an operator would
#            otherwise put there, for what any HTTP proxy costs on this
#            machine. Its CPU per request counts master and workers.
# step       the autoscaling reaction as benches/autoscale.sh measures it
#            (tick 1s, report_interval 1s, scrape_interval 500ms; min 1,
#            max 4, target 4 ongoing, max_concurrency 4): a step from 0 to
#            RPS_STEP requests/s sent through a gateway (its queue and
#            in-flight count reach the coordinator every 300 ms and at once
#            on a step) or over the replicas found on /v1/endpoints (the
#            coordinator learns of it from scrapes). Reported: step → first
#            `scale 1 → N` event, median of RUNS.
# zero       a model at zero (min_replicas 0, max 2, demo server that
#            takes ZERO_INIT to get ready, max_concurrency 4) behind a
#            gateway receives a trickle of TRICKLE requests/s for 10 s, then
#            BURST requests at once, all streamed; a fresh fleet per run.
#            Reported: failed requests, time to first token of the first
#            request (the wake), TTFT p50 / max of the rest, replicas at the
#            end.
#
#   benches/gateway.sh
#   PARTS=step RUNS=5 benches/gateway.sh
#   PARTS=zero BURST=200 benches/gateway.sh
#   PARTS=overhead BASELINE=/tmp/gpufleet-old benches/gateway.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

RUNS=${RUNS:-3}
PARTS=${PARTS:-"overhead step"}
RPS_LOW=${RPS_LOW:-50}
RPS_HIGH=${RPS_HIGH:-400}
RPS_STEP=${RPS_STEP:-25}
LOAD_FOR=${LOAD_FOR:-10}
TRICKLE=${TRICKLE:-1}
BURST=${BURST:-200}
ZERO_INIT=${ZERO_INIT:-3s}
CONNS=${CONNS:-32}
PIN=${PIN:-0}
BASELINE=${BASELINE:-}
GATEWAY_THREADS=${GATEWAY_THREADS:-}
TOKEN_TIME=${TOKEN_TIME:-1ms}
NGINX=${NGINX:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
. benches/lib.sh

case " $PARTS " in *" overhead "*) need wrk ;; esac
[ "$NGINX" != 1 ] || need nginx
work=$(mktemp -d /var/tmp/gpufleet-gateway.XXXXXX)
touch "$work/pids"
trap 'end_fleet "$work"' EXIT
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"
[ -z "$BASELINE" ] || cp "$BASELINE" "$work/gpufleet-baseline"
head -c $((8 << 20)) /dev/urandom >"$work/weights.bin"

PYTHONPATH="$root/benches" python3 - "$work" "$RUNS" "$PARTS" "$RPS_LOW" "$RPS_HIGH" "$RPS_STEP" "$LOAD_FOR" \
    "$TRICKLE" "$BURST" "$ZERO_INIT" "$CONNS" "$PIN" "$BASELINE" "$GATEWAY_THREADS" "$TOKEN_TIME" "$NGINX" <<'PY'
import json, os, re, statistics, subprocess, sys, threading, time, urllib.request
from fleet import Fleet, spawn, free_port, gateway_replicas, stream_completion, wait_for as wait

work, runs, parts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
rps_low, rps_high, rps_step, load_for = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
trickle, burst, zero_init = float(sys.argv[8]), int(sys.argv[9]), sys.argv[10]
conns, pin = int(sys.argv[11]), sys.argv[12] == "1"
baseline, gateway_threads = sys.argv[13] != "", sys.argv[14]
token_time = sys.argv[15]
with_nginx = sys.argv[16] == "1"
# With PIN: the load generator (and the replica) on CPU 0, the gateway on CPU 1.
on_cpu0 = ["taskset", "-c", "0"] if pin else []
binary, pidfile, weights = f"{work}/gpufleet", f"{work}/pids", f"{work}/weights.bin"

def gateway(fleet, d, exe=binary, name="gateway"):
    port = free_port()
    with open(f"{d}/{name}.toml", "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\ncoordinator = "http://127.0.0.1:{fleet.grpc}"\n'
                f'name = "{name}"\nqueue_capacity = 100000\n')
    threads = ["env", f"TOKIO_WORKER_THREADS={gateway_threads}"] if gateway_threads else []
    p = spawn(pidfile, [*threads, exe, "gateway", "--config", f"{d}/{name}.toml"], f"{d}/{name}.log")
    gateway.pids = getattr(gateway, "pids", []) + [p.pid]
    return port

def nginx(d, replica_port):
    """nginx as a reverse proxy in front of the replica, as an operator would
    set it up for throughput: a worker per CPU, kept-alive upstream
    connections, no access log. Returns its port."""
    port = free_port()
    os.makedirs(f"{d}/nginx", exist_ok=True)
    with open(f"{d}/nginx/nginx.conf", "w") as f:
        f.write(f"""user root;
worker_processes auto;
daemon off;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx/body;
    proxy_temp_path {d}/nginx/proxy;
    upstream replica {{ server 127.0.0.1:{replica_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    spawn(pidfile, ["nginx", "-p", f"{d}/nginx", "-c", f"{d}/nginx/nginx.conf"], f"{d}/nginx/out.log")
    wait("nginx", lambda: len(nginx_pids(d)) > 1)
    return port

def nginx_pids(d):
    """nginx's master and its workers."""
    try:
        master = open(f"{d}/nginx/nginx.pid").read().strip()
    except OSError:
        return []
    workers = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout.split()
    return [master, *workers]

def end_run():
    for p in open(pidfile).read().split():
        subprocess.run(["kill", p], capture_output=True)
    time.sleep(2)
    for line in subprocess.run(["pgrep", "-f", f"^{binary} demo server"], capture_output=True, text=True).stdout.split():
        subprocess.run(["kill", line], capture_output=True)
    time.sleep(1)

def load(args, out):
    subprocess.run([*on_cpu0, binary, "demo", "load", *args, "--duration", f"{load_for}s", "--timeout", "30s",
                    "--seed", "7", "-o", "json"], stdout=open(out, "w"), stderr=subprocess.DEVNULL, check=True)
    return json.load(open(out))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

if "overhead" in parts:
    d = f"{work}/overhead"
    os.makedirs(d)
    fleet = Fleet(binary, pidfile, d, 1, [work])
    fleet.apply(
        f'name = "bench-llm"\nweights = "{weights}"\n[server]\npreset = "vllm"\n'
        f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}", '
        f'"--model-name", "bench-llm", "--concurrency", "256", "--token-time", "{token_time}", "--tokens", "1"]\n'
        f'gpus = 1\ngpu_memory = "20GiB"\nready_timeout = "120s"\nmax_concurrency = 256\n')
    port = gateway(fleet, d)
    base_port = gateway(fleet, d, f"{work}/gpufleet-baseline", "baseline") if baseline else None
    rep = wait("a ready replica", lambda: [x for x in (fleet.cli("replica", "ls") or []) if x.get("state") == "ready"])
    direct = f"http://127.0.0.1:{rep[0]['port']}"
    nginx_port = nginx(d, rep[0]["port"]) if with_nginx else None
    for p in (port, base_port):
        if p:
            wait("the replica at the gateway", lambda: gateway_replicas(p))
    if pin:
        server = f"{binary}\0demo\0server\0--port\0{rep[0]['port']}\0".encode()
        def cmdline(p):
            try:
                return open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                return b""
        pids = [p for p in os.listdir("/proc") if p.isdigit() and cmdline(p).startswith(server)]
        assert pids, "the replica's process was not found"
        proxies = gateway.pids + (nginx_pids(d) if nginx_port else [])
        for p, cpu in [(p, "0") for p in pids] + [(str(g), "1") for g in proxies]:
            subprocess.run(["taskset", "-a", "-p", "-c", cpu, p], check=True, capture_output=True)
    rows = []
    for rps in [r for r in (rps_low, rps_high) if r != "0"]:
        res = {"direct": [], "gateway": []}
        for n in range(runs):
            res["direct"].append(load(["--url", direct, "--rps", rps], f"{d}/direct-{rps}-{n}.json"))
            res["gateway"].append(load(["--gateway", f"http://127.0.0.1:{port}", "--model", "bench-llm", "--rps", rps],
                                       f"{d}/gateway-{rps}-{n}.json"))
        for path, rs in res.items():
            rows.append((rps, path, med(r["p50_s"] for r in rs), med(r["p90_s"] for r in rs),
                         med(r["completed"] / r["duration_s"] for r in rs), sum(r["failed"] for r in rs)))
        print(json.dumps(res), file=sys.stderr)
    with open(f"{d}/post.lua", "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.body = \'{"model": "bench-llm", "prompt": "hello", "max_tokens": 1}\'\n')
    def cpu_s(pid):
        # utime + stime of the whole process, all threads.
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    def wrk(url, pid):
        # pid: one process, or a function giving the processes to count.
        if callable(pid):
            procs = pid
            pid = None
            before = sum(cpu_s(p) for p in procs())
        else:
            procs = None
            before = cpu_s(pid) if pid else None
        out = subprocess.run([*on_cpu0, "wrk", "-t", "1", "-c", str(conns), "-d", f"{load_for}s", "--latency",
                              "-s", f"{d}/post.lua", f"{url}/v1/completions"],
                             capture_output=True, text=True, check=True).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        done = int(re.search(r"(\d+) requests in", out).group(1))
        # The gateway's CPU time per request: robust to the machine's other
        # load, which moves requests/s far more.
        if procs:
            us = (sum(cpu_s(p) for p in procs()) - before) / done * 1e6 if done else None
        else:
            us = (cpu_s(pid) - before) / done * 1e6 if pid and done else None
        return (float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), int(errors.group(1)) if errors else 0, us)
    targets = {"direct": (direct, None), "gateway": (f"http://127.0.0.1:{port}", gateway.pids[0])}
    if base_port:
        targets["baseline"] = (f"http://127.0.0.1:{base_port}", gateway.pids[1])
    if nginx_port:
        targets["nginx"] = (f"http://127.0.0.1:{nginx_port}", lambda: nginx_pids(d))
    sat = {path: [] for path in targets}
    order = list(targets)
    for n in range(runs):
        # Rotated, so that no path always runs first (the machine's other
        # load drifts over minutes).
        for i in range(len(order)):
            path = order[(n + i) % len(order)]
            sat[path].append(wrk(*targets[path]))
    print(json.dumps(sat), file=sys.stderr)
    end_run()
    layout = "gateway on CPU 1, load generator and replica on CPU 0" if pin else "all processes on all CPUs"
    print(f"\noverhead: one demo replica answering after {token_time} ({layout}); median of {runs} runs of {load_for} s each\n")
    print("| offered req/s | path | p50 (ms) | p90 (ms) | completed/s | failed |")
    print("|---|---|---|---|---|---|")
    for rps, path, p50, p90, tput, failed in rows:
        print(f"| {rps} | {path} | {p50 * 1000:.2f} | {p90 * 1000:.2f} | {tput:.1f} | {failed} |")
    print(f"\nsaturated: wrk, {conns} connections back to back, {load_for} s, median of {runs} runs\n")
    print("| path | requests/s | all runs | non-2xx | gateway CPU per request (µs) |")
    print("|---|---|---|---|---|")
    for path, rs in sat.items():
        us = med(r[2] for r in rs)
        print(f"| {path} | {med(r[0] for r in rs):.0f} | {', '.join(f'{r[0]:.0f}' for r in rs)} | {sum(r[1] for r in rs)} | "
              f"{'' if us is None else f'{us:.1f}'} |")
    print(f"\ngateway / direct: {med(r[0] for r in sat['gateway']) / med(r[0] for r in sat['direct']):.2f}")
    others = [p for p in ("baseline", "nginx") if p in sat]
    for path in others:
        print(f"{path} / direct: {med(r[0] for r in sat[path]) / med(r[0] for r in sat['direct']):.2f}")
    if others:
        # Per run, against the direct run next to it: robust to drift.
        for path in ("gateway", *others):
            ratios = [g[0] / d[0] for g, d in zip(sat[path], sat["direct"])]
            print(f"{path} / direct per run: {', '.join(f'{r:.2f}' for r in ratios)} (median {med(ratios):.2f})")

def ts(e):
    return e["time_unix_ms"] / 1000

if "step" in parts:
    results = []
    for n in range(1, runs + 1):
        for mode in ("gateway", "scrape"):
            d = f"{work}/step-{mode}-{n}"
            os.makedirs(d)
            fleet = Fleet(binary, pidfile, d, 4, [work], coordinator_extra='tick = "1s"\n',
                          agent_extra='report_interval = "1s"\nscrape_interval = "500ms"\n')
            fleet.apply(
                f'name = "bench-llm"\nweights = "{weights}"\n[server]\npreset = "vllm"\n'
                f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}", "--model-name", "bench-llm"]\n'
                f'gpus = 1\ngpu_memory = "20GiB"\nready_timeout = "120s"\nstop_timeout = "10s"\nmax_concurrency = 4\n'
                f'[scaling]\nmin_replicas = 1\nmax_replicas = 4\ntarget_ongoing_requests = 4\n'
                f'stable_window = "30s"\npanic_window = "6s"\nscale_down_delay = "60s"\n')
            port = gateway(fleet, d)
            wait("a ready replica", lambda: [x for x in (fleet.cli("replica", "ls") or []) if x.get("state") == "ready"])
            wait("the replica at the gateway", lambda: gateway_replicas(port))
            time.sleep(5)
            target = (["--gateway", f"http://127.0.0.1:{port}", "--model", "bench-llm"] if mode == "gateway"
                      else ["--model", "bench-llm", "--coordinator-http", f"http://127.0.0.1:{fleet.http}"])
            step = time.time()
            p = spawn(pidfile, [binary, "demo", "load", *target, "--rps", rps_step, "--duration", "10s", "-o", "json"], f"{d}/load.json")
            p.wait()
            events = fleet.cli("events", "--model", "bench-llm", "--limit", "1000") or []
            decision = next(((ts(e) - step, e["message"]) for e in sorted(events, key=ts)
                             if e.get("kind") == "scale" and ts(e) >= step and re.match(r"\s*1 → ", e.get("message", ""))), None)
            r = {"mode": mode, "run": n, "decision_s": decision[0] if decision else None,
                 "decision": decision[1] if decision else None}
            print(json.dumps(r, ensure_ascii=False), file=sys.stderr)
            results.append(r)
            end_run()
    print(f"\nstep 0 → {rps_step} req/s (tick 1s, report 1s, scrape 500ms); {runs} runs per path\n")
    print("| load arrives | step → scale decision, median (s) | all runs (s) |")
    print("|---|---|---|")
    for mode, label in (("gateway", "through a gateway"), ("scrape", "straight to replicas (scrapes only)")):
        rs = [r for r in results if r["mode"] == mode]
        m = med(r["decision_s"] for r in rs)
        all_runs = ", ".join(f"{r['decision_s']:.2f}" if r["decision_s"] is not None else "none" for r in rs)
        print(f"| {label} | {m:.2f} | {all_runs} |" if m is not None else f"| {label} | none | {all_runs} |")

if "zero" in parts:
    results = []
    for n in range(1, runs + 1):
        d = f"{work}/zero-{n}"
        os.makedirs(d)
        fleet = Fleet(binary, pidfile, d, 2, [work])
        fleet.apply(
            f'name = "bench-llm"\nweights = "{weights}"\n[server]\npreset = "vllm"\n'
            f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}", '
            f'"--model-name", "bench-llm", "--init-time", "{zero_init}"]\n'
            f'gpus = 1\ngpu_memory = "20GiB"\nready_timeout = "120s"\nmax_concurrency = 4\n'
            f'[scaling]\nmin_replicas = 0\nmax_replicas = 2\ntarget_ongoing_requests = 4\n'
            f'scale_to_zero_after = "1h"\n')
        port = gateway(fleet, d)
        def models():
            try:
                return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2))["models"]
            except OSError:
                return None
        wait("the model at the gateway", models)
        assert gateway_replicas(port) == 0, "the model should start at zero"
        out, lock = [], threading.Lock()
        def send(phase, k):
            status, ttft = stream_completion(port, {"model": "bench-llm", "prompt": f"{phase} {k}", "max_tokens": 8})
            with lock:
                out.append((phase, k, status, ttft))
        threads = []
        for k in range(int(10 * trickle)):
            t = threading.Thread(target=send, args=("trickle", k))
            t.start()
            threads.append(t)
            time.sleep(1 / trickle)
        for k in range(burst):
            t = threading.Thread(target=send, args=("burst", k))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        ok = [o for o in out if o[2] == 200 and o[3] is not None]
        first = next(o[3] for o in out if o[0] == "trickle" and o[1] == 0)
        rest = sorted(o[3] for o in ok if not (o[0] == "trickle" and o[1] == 0))
        r = {"run": n, "failed": len(out) - len(ok), "sent": len(out), "first_ttft_s": first,
             "rest_p50_s": statistics.median(rest) if rest else None, "rest_max_s": rest[-1] if rest else None,
             "replicas_end": gateway_replicas(port)}
        print(json.dumps(r), file=sys.stderr)
        results.append(r)
        end_run()
    print(f"\nzero: a model at zero, {trickle:g} request/s for 10 s then {burst} at once, "
          f"demo server ready {zero_init} after start; {runs} runs\n")
    print("| run | sent | failed | first request: TTFT from zero (s) | others: TTFT p50 (s) | max (s) | replicas at the end |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        secs = lambda x: "failed" if x is None else f"{x:.2f}"
        print(f"| {r['run']} | {r['sent']} | {r['failed']} | {secs(r['first_ttft_s'])} | {secs(r['rest_p50_s'])} | "
              f"{secs(r['rest_max_s'])} | {r['replicas_end']} |")
PY
