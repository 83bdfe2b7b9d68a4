#!/usr/bin/env bash
# The gateway's three ways of choosing a replica (routing = prefix,
# least-outstanding, round-robin) on a shared-prefix workload: TENANTS
# tenants, each with its own long system prompt (about 700 tokens), every
# request that prompt plus a short question of its own, max_tokens 4,
# streamed. CLIENTS clients send back to back (closed loop) for LOAD_FOR
# seconds through one gateway per mode, the modes alternating, RUNS times
# each; every (run, mode) draws fresh tenant prompts, so no mode finds the
# prompts of another in an engine's cache. Reported per mode: the median
# over runs of TTFT p50 / p90 (client side, request sent → first SSE event)
# and of completed requests/s.
#
# ENGINES="llama demo":
#   llama  REPLICAS llama-server replicas from ../shared/engines (tiny-llama,
#          --parallel SLOTS, one thread each, max_concurrency = SLOTS), once
#          per CACHE_RAM value: llama.cpp keeps prompt caches in host memory
#          up to --cache-ram MiB (its default 8192); 0 leaves only the
#          slots' own KV cache, as on a GPU whose memory is full.
#   demo   REPLICAS demo model servers (--concurrency SLOTS, 20 ms a
#          token): no prompt cache at all, so placement matters only for
#          balance.
#
#   benches/gateway-routing.sh
#   ENGINES=llama CACHE_RAM=0 RUNS=5 benches/gateway-routing.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

RUNS=${RUNS:-3}
ENGINES=${ENGINES:-"llama demo"}
CACHE_RAM=${CACHE_RAM:-"8192 0"}
REPLICAS=${REPLICAS:-3}
SLOTS=${SLOTS:-2}
TENANTS=${TENANTS:-16}
CLIENTS=${CLIENTS:-8}
LOAD_FOR=${LOAD_FOR:-20}
LLAMA_SERVER=${LLAMA_SERVER:-$root/../shared/engines/llama-server}
LLAMA_MODEL=${LLAMA_MODEL:-$root/../shared/engines/tiny-llama.gguf}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
. benches/lib.sh

work=$(mktemp -d /var/tmp/gpufleet-routing.XXXXXX)
touch "$work/pids"
# Replicas outlive their agent by design: the llama-server ones are found by
# the private copy of the model they were given.
end_llama() { for p in $(pgrep -f -- "-m $work/tiny-llama.gguf" || true); do kill "$p" 2>/dev/null || true; done; }
trap 'end_fleet "$work"; end_llama' EXIT
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"
head -c $((8 << 20)) /dev/urandom >"$work/weights.bin"
cp "$LLAMA_MODEL" "$work/tiny-llama.gguf"

PYTHONPATH="$root/benches" python3 - "$work" "$RUNS" "$ENGINES" "$CACHE_RAM" "$REPLICAS" "$SLOTS" \
    "$TENANTS" "$CLIENTS" "$LOAD_FOR" "$LLAMA_SERVER" <<'PY'
import json, random, statistics, subprocess, sys, threading, time, urllib.request
from fleet import Fleet, spawn, free_port, gateway_replicas, stream_completion, wait_for

(work, runs, engines, cache_rams, replicas, slots, tenants, clients, load_for,
 llama) = sys.argv[1:]
runs, replicas, slots, tenants, clients, load_for = map(int, (runs, replicas, slots, tenants, clients, load_for))
binary, pidfile = f"{work}/gpufleet", f"{work}/pids"
MODES = ["prefix", "least-outstanding", "round-robin"]
WORDS = ("the of and to in is for that on with as by at from this be are it an or was which "
         "have not but fleet gateway replica model token cache prompt node queue").split()

def placements(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("gpufleet_gateway_placements_total{"):
            how = line.split('how="')[1].split('"')[0]
            out[how] = out.get(how, 0) + float(line.rsplit(" ", 1)[1])
    return out

def load(port, seed):
    rng = random.Random(seed)
    systems = [" ".join(rng.choice(WORDS) for _ in range(700)) for _ in range(tenants)]
    ttfts, failed, lock = [], [0], threading.Lock()
    end = time.monotonic() + load_for
    def client(k):
        r = random.Random(seed * 1000 + k)
        n = 0
        while time.monotonic() < end:
            t = r.randrange(tenants)
            q = " ".join(r.choice(WORDS) for _ in range(12))
            status, ttft = stream_completion(port, {"model": "bench-llm", "max_tokens": 4,
                                                    "prompt": f"{systems[t]}\nUser {k}-{n}: {q}?\nAssistant:"})
            ok = status == 200 and ttft is not None
            n += 1
            with lock:
                if ok:
                    ttfts.append(ttft)
                else:
                    failed[0] += 1
    started = time.monotonic()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - started
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) >= 10 else [None] * 9
    return {"p50": statistics.median(ttfts) if ttfts else None, "p90": q[8],
            "per_s": len(ttfts) / took, "completed": len(ttfts), "failed": failed[0]}

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def bench(label, command):
    d = f"{work}/{label}"
    fleet = Fleet(binary, pidfile, d, replicas, [work])
    fleet.apply(
        f'name = "bench-llm"\nweights = "{command[1]}"\nreplicas = {replicas}\n[server]\npreset = "{command[0]}"\n'
        f'command = {json.dumps(command[2])}\n'
        f'gpus = 1\ngpu_memory = "1GiB"\nready_timeout = "180s"\nmax_concurrency = {slots}\n')
    ports = {}
    for mode in MODES:
        port = free_port()
        with open(f"{d}/gateway-{mode}.toml", "w") as f:
            f.write(f'listen = "127.0.0.1:{port}"\ncoordinator = "http://127.0.0.1:{fleet.grpc}"\n'
                    f'name = "{mode}"\nrouting = "{mode}"\nqueue_capacity = 10000\nhold_timeout = "120s"\n')
        spawn(pidfile, [binary, "gateway", "--config", f"{d}/gateway-{mode}.toml"], f"{d}/gateway-{mode}.log")
        ports[mode] = port
    for mode, port in ports.items():
        wait_for(f"{replicas} replicas at the {mode} gateway", lambda: gateway_replicas(port) >= replicas, within=180)
    res = {m: [] for m in MODES}
    for n in range(runs):
        # Rotate the order so that no mode always runs first or last.
        for i in range(len(MODES)):
            mode = MODES[(n + i) % len(MODES)]
            r = load(ports[mode], seed=hash((label, n, mode)) & 0xFFFF)
            res[mode].append(r)
            print(json.dumps({"engine": label, "run": n, "mode": mode, **r}), file=sys.stderr)
    hows = {m: placements(p) for m, p in ports.items()}
    for p in open(pidfile).read().split():
        subprocess.run(["kill", p], capture_output=True)
    time.sleep(2)
    for pattern in (f"-m {work}/tiny-llama.gguf", f"^{binary} demo server"):
        found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
        for p in found.split():
            subprocess.run(["kill", p], capture_output=True)
    time.sleep(1)
    open(pidfile, "w").close()
    print(f"\n{label}: {replicas} replicas × {slots} slots, {tenants} tenants, {clients} clients, "
          f"median of {runs} runs × {load_for} s\n")
    print("| routing | TTFT p50 (ms) | TTFT p90 (ms) | completed/s | failed | placements |")
    print("|---|---|---|---|---|---|")
    base = med(r["per_s"] for r in res["round-robin"])
    for mode in MODES:
        rs = res[mode]
        p50, p90, tput = med(r["p50"] for r in rs), med(r["p90"] for r in rs), med(r["per_s"] for r in rs)
        how = ", ".join(f"{k} {int(v)}" for k, v in sorted(hows[mode].items()))
        ratio = f" ({tput / base:.2f}×)" if base else ""
        print(f"| {mode} | {p50 * 1000:.0f} | {p90 * 1000:.0f} | {tput:.2f}{ratio} | "
              f"{sum(r['failed'] for r in rs)} | {how} |")
    sys.stdout.flush()

for engine in engines.split():
    if engine == "llama":
        for cram in cache_rams.split():
            bench(f"llama-cache-ram-{cram}", ("llamacpp", f"{work}/tiny-llama.gguf",
                  [llama, "-m", "{weights}", "--port", "{port}", "--host", "127.0.0.1", "--metrics",
                   "--parallel", str(slots), "-c", str(2048 * slots), "-t", "1", "--cache-ram", cram]))
    elif engine == "demo":
        bench("demo", ("vllm", f"{work}/weights.bin",
              [binary, "demo", "server", "--port", "{port}", "--weights", "{weights}", "--model-name",
               "bench-llm", "--concurrency", str(slots), "--token-time", "20ms"]))
    else:
        sys.exit(f"unknown engine {engine}; ENGINES takes llama and demo")
PY
