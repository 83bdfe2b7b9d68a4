#!/usr/bin/env python3
"""`gpufleet warm start --wait` end to end against `vmtouch -t`, on a cold
model directory (default 2 GiB in four files).

What an operator times: from typing the command to its return, through the
CLI, the coordinator, the agent's assignment, the fill and the report back
(gpufleet), or the fill alone (vmtouch). Before every run the directory is
evicted (sync + vmtouch -e, checked 0% resident); for gpufleet the entry is
unassigned through the fleet (`warm evict`) first, so the agent does not
refill it, and each run fills from cold. RUNS rounds
(default 5), the two interleaved; medians and the ratio are printed.

    benches/warm-e2e.py                        # builds the release binary
    DIR=/srv/models/bench SIZE_MIB=2048 RUNS=5 benches/warm-e2e.py
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "benches"))
from fleet import Fleet  # noqa: E402

DIR = os.environ.get("DIR", "/var/tmp/gpufleet-bench2/warm-e2e")
SIZE_MIB = int(os.environ.get("SIZE_MIB", "2048"))
RUNS = int(os.environ.get("RUNS", "5"))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def resident_pct(path):
    out = sh("vmtouch", path).stdout
    for line in out.splitlines():
        if "Resident Pages" in line:
            return float(line.rsplit(" ", 1)[1].rstrip("%"))
    raise SystemExit(f"vmtouch said nothing of {path}")


def evict_cold(path):
    os.sync()
    sh("vmtouch", "-e", "-q", path)
    pct = resident_pct(path)
    if pct != 0:
        raise SystemExit(f"eviction left {pct}% of {path} resident; cannot measure cold")


def main():
    if shutil.which("vmtouch") is None:
        subprocess.run(["apt-get", "install", "-y", "vmtouch"], check=True, capture_output=True)
    if subprocess.run(["stat", "-f", "-c", "%T", os.path.dirname(DIR)], capture_output=True, text=True).stdout.strip() in ("tmpfs", "ramfs"):
        raise SystemExit(f"{DIR} is on a RAM filesystem: nothing is ever cold there")
    os.makedirs(DIR, exist_ok=True)
    part = SIZE_MIB // 4
    for i in range(4):
        f = f"{DIR}/model-{i}.safetensors"
        if not os.path.exists(f) or os.path.getsize(f) != part << 20:
            print(f"generating {f} ({part} MiB)", file=sys.stderr)
            subprocess.run(f"head -c {part}M /dev/urandom > {f}", shell=True, check=True)
    os.sync()

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
    work = tempfile.mkdtemp(prefix="gpufleet-warm-e2e.")
    binary = f"{work}/gpufleet"
    shutil.copy(f"{target}/release/gpufleet", binary)
    pidfile = f"{work}/pids"
    open(pidfile, "w").close()
    try:
        fleet = Fleet(binary, pidfile, work, 1, [DIR])
        fleet.apply(
            f'name = "bench"\nweights = "{DIR}"\nreplicas = 0\n[server]\npreset = "vllm"\n'
            f'command = ["{binary}", "demo", "server", "--port", "{{port}}", "--weights", "{{weights}}"]\n'
            'gpus = 1\ngpu_memory = "10GiB"\n'
        )
        times = {"gpufleet": [], "vmtouch": []}
        for run in range(RUNS):
            for tool in ("gpufleet", "vmtouch"):
                # Unassign the warm entry before every run (the agent would
                # refill it under vmtouch's feet), then make it cold.
                fleet.run("warm", "evict", "bench", "--node", "bench-node")
                for _ in range(100):
                    entries = fleet.cli("warm", "ls") or []
                    if not any(e["model"] == "bench" and e["resident_bytes"] > 0 for e in entries):
                        break
                    time.sleep(0.1)
                evict_cold(DIR)
                cmd = (
                    [binary, "warm", "start", "bench", "--node", "bench-node", "--wait"]
                    if tool == "gpufleet"
                    else ["vmtouch", "-t", "-q", DIR]
                )
                t0 = time.monotonic()
                subprocess.run(cmd, check=True, capture_output=True, env=fleet.env)
                took = time.monotonic() - t0
                pct = resident_pct(DIR)
                if pct < 99.5:
                    raise SystemExit(f"{tool} left {DIR} {pct}% resident")
                times[tool].append(took)
                print(f"run {run + 1} {tool}: {took:.2f} s", file=sys.stderr)
        g, v = statistics.median(times["gpufleet"]), statistics.median(times["vmtouch"])
        gib = SIZE_MIB / 1024
        print(f"| tool | median of {RUNS} (s) | GiB/s | runs (s) |")
        print("|---|---|---|---|")
        for tool, m in (("gpufleet warm start --wait", g), ("vmtouch -t", v)):
            runs = ", ".join(f"{t:.2f}" for t in times[tool.split()[0]])
            print(f"| {tool} | {m:.2f} | {gib / m:.2f} | {runs} |")
        print(f"\nspeed of gpufleet end to end / vmtouch: {v / g:.2f}x (goal: >= 0.9x)")
    finally:
        with open(pidfile) as f:
            for pid in f.read().split():
                subprocess.run(["kill", pid], capture_output=True)
        subprocess.run(["pkill", "-f", f"^{binary} demo server"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
