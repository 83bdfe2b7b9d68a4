#!/usr/bin/env python3
"""Failover of the coordinators on a real etcd (docs/BENCHMARKS.md, "HA").

Starts etcd (one member, data on /dev/shm), three coordinators on it, two
agents with simulated GPUs and a model with two replicas (demo model
servers). Then, RUNS times each:

  kill -9   the leader is killed; measured: kill -> another coordinator's
            /healthz says "ok leader", and kill -> the new leader lists every
            node connected again (agents re-attached). The killed coordinator
            is started again and rejoins as a follower.
  graceful  the leader gets SIGTERM (it revokes its lease); measured:
            SIGTERM -> another coordinator leads.

After every round the replicas (id, pid) are compared with those before the
first: any replica stopped, restarted, moved or duplicated is counted.
/healthz is polled every 20 ms, `node ls` every 100 ms.

Through every round a steady load (RPS requests a second, Poisson, each
max_tokens 8) goes to the model through a gateway (`gpufleet gateway`) that
lists the three coordinators: `gpufleet demo load --gateway` starts 2 s before
the signal and runs LOAD_S seconds, well past the agents' return; its failed
requests (any non-2xx answer, transport error or timeout) are summed, and its
worst latency is reported.

    BIN=target/release/gpufleet RUNS=10 LEASE=5s RPS=20 benches/ha_failover.py

EVENTS=graceful runs only the SIGTERM rounds ("kill -9" only the others);
KEEP=1 keeps the scratch directory with every process's log.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import free_port  # noqa: E402

BIN = os.path.abspath(os.environ.get("BIN", "target/release/gpufleet"))
RUNS = int(os.environ.get("RUNS", "5"))
LEASE = os.environ.get("LEASE", "5s")
RPS = float(os.environ.get("RPS", "20"))
LOAD_S = int(os.environ.get("LOAD_S", "16"))


def healthz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.read().decode()
    except Exception as e:  # 503 (no leader), refused (killed)
        return str(e)


class Bench:
    def __init__(self, work):
        self.work = work
        self.procs = []
        self.cl = shutil.which("etcd")
        if not self.cl:
            sys.exit("etcd not found on PATH (Debian: apt-get install etcd-server)")
        cport, pport = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{cport}"
        peer = f"http://127.0.0.1:{pport}"
        self.etcd = self.spawn("etcd", [self.cl, "--name", "b", "--data-dir", f"{work}/etcd",
                                        "--listen-client-urls", self.etcd_url,
                                        "--advertise-client-urls", self.etcd_url,
                                        "--listen-peer-urls", peer,
                                        "--initial-advertise-peer-urls", peer,
                                        "--initial-cluster", f"b={peer}"])
        # The demo servers run from a private copy, so they can be found and ended.
        shutil.copy(BIN, f"{work}/gpufleet")
        self.bin = f"{work}/gpufleet"
        self.coords = {}
        for i in range(1, 4):
            name = f"c{i}"
            grpc, http = free_port(), free_port()
            cfg = f"{work}/{name}.toml"
            with open(cfg, "w") as f:
                f.write(f'listen = "127.0.0.1:{grpc}"\nhttp_listen = "127.0.0.1:{http}"\n'
                        f'data_dir = "{work}/{name}"\n[store]\nbackend = "etcd"\n'
                        f'endpoints = ["{self.etcd_url}"]\nprefix = "/bench"\nname = "{name}"\n'
                        f'lease_ttl = "{LEASE}"\n')
            self.coords[name] = {"grpc": grpc, "http": http, "cfg": cfg}
            self.start_coordinator(name)
        self.urls = ",".join(f"http://127.0.0.1:{c['grpc']}" for c in self.coords.values())
        os.makedirs(f"{work}/models/m", exist_ok=True)
        with open(f"{work}/models/m/weights.bin", "wb") as f:
            f.write(b"\x07" * (1 << 20))
        coordinators = ", ".join(f'"{u}"' for u in self.urls.split(","))
        for n in ["node-a", "node-b"]:
            state = f"{work}/{n}"
            os.makedirs(state)
            base = 20000 + (free_port() % 400) * 100
            with open(f"{state}/agent.toml", "w") as f:
                f.write(f'node_name = "{n}"\ncoordinator = [{coordinators}]\nstate_dir = "{state}"\n'
                        f'http_listen = "127.0.0.1:{free_port()}"\nmodel_roots = ["{work}/models"]\n'
                        f'port_range = "{base}-{base + 99}"\nallow_root_replicas = true\n'
                        f'[gpu]\nbackend = "simulated"\nsimulated_count = 2\n')
            self.spawn(n, [self.bin, "agent", "--config", f"{state}/agent.toml"])
        self.wait(60, "two connected nodes", lambda: self.connected() == 2)
        spec = f"{work}/m.toml"
        with open(spec, "w") as f:
            f.write(f'name = "m"\nweights = "{work}/models/m/weights.bin"\nreplicas = 2\n[server]\n'
                    f'preset = "vllm"\ncommand = ["{self.bin}", "demo", "server", "--port", "{{port}}", '
                    f'"--weights", "{{weights}}", "--model-name", "m"]\ngpus = 1\ngpu_memory = "10GiB"\n')
        self.cli(["model", "apply", "-f", spec])
        self.wait(60, "two ready replicas", lambda: len(self.replicas()) == 2)
        self.gateway = f"http://127.0.0.1:{free_port()}"
        with open(f"{work}/gateway.toml", "w") as f:
            f.write(f'listen = "{self.gateway[7:]}"\ncoordinator = [{coordinators}]\nname = "bench"\n')
        self.spawn("gateway", [self.bin, "gateway", "--config", f"{work}/gateway.toml"])
        self.wait(30, "the gateway to route the model", lambda: self.load(1, 5, 1)["completed"] >= 1)

    def load(self, rps, secs, seed):
        """`demo load` through the gateway; its JSON report."""
        out = subprocess.run([self.bin, "demo", "load", "--gateway", self.gateway, "--model", "m",
                              "--rps", str(rps), "--duration", f"{secs}s", "--max-tokens", "8",
                              "--timeout", "30s", "--seed", str(seed), "-o", "json"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"demo load failed: {out.stderr}")
        return json.loads(out.stdout)

    def start_load(self, seed):
        return subprocess.Popen([self.bin, "demo", "load", "--gateway", self.gateway, "--model", "m",
                                 "--rps", str(RPS), "--duration", f"{LOAD_S}s", "--max-tokens", "8",
                                 "--timeout", "30s", "--seed", str(seed), "-o", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def spawn(self, name, args):
        p = subprocess.Popen(args, stdout=open(f"{self.work}/{name}.log", "a"),
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def start_coordinator(self, name):
        c = self.coords[name]
        c["proc"] = self.spawn(name, [BIN, "coordinator", "--config", c["cfg"]])

    def cli(self, args, url=None):
        out = subprocess.run([self.bin, *args, "-o", "json"], capture_output=True, text=True,
                             env={**os.environ, "GPUFLEET_COORDINATOR": url or self.urls})
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def connected(self, url=None):
        nodes = self.cli(["node", "ls"], url) or []
        return sum(1 for n in nodes if n.get("connected"))

    def replicas(self, url=None):
        rs = self.cli(["replica", "ls", "--model", "m"], url) or []
        return sorted((r["id"], r["node"], r["pid"]) for r in rs if r["state"] == "ready")

    def wait(self, secs, what, f, every=0.1):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            if f():
                return time.monotonic()
            time.sleep(every)
        sys.exit(f"timed out waiting for {what}")

    def leader(self):
        for name, c in self.coords.items():
            if healthz(c["http"]).startswith("ok leader"):
                return name
        return None

    def round(self, sig, seed):
        self.wait(30, "a leader", self.leader)
        old = self.leader()
        others = [n for n in self.coords if n != old]
        load = self.start_load(seed)
        time.sleep(2)
        t0 = time.monotonic()
        self.coords[old]["proc"].send_signal(sig)
        self.coords[old]["proc"].wait()
        t_leader = self.wait(30, "a new leader", lambda: any(
            healthz(self.coords[n]["http"]).startswith("ok leader") for n in others), every=0.02)
        new = next(n for n in others if healthz(self.coords[n]["http"]).startswith("ok leader"))
        url = f"http://127.0.0.1:{self.coords[new]['grpc']}"
        t_agents = self.wait(30, "agents re-attached", lambda: self.connected(url) == 2)
        self.start_coordinator(old)
        self.wait(30, "the restarted coordinator to follow",
                  lambda: healthz(self.coords[old]["http"]).startswith("ok follower"))
        out, err = load.communicate()
        if load.returncode != 0:
            sys.exit(f"demo load failed: {err}")
        return t_leader - t0, t_agents - t0, url, json.loads(out)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        time.sleep(1)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        subprocess.run(["pkill", "-f", f"^{self.bin} demo server"])


def main():
    work = tempfile.mkdtemp(prefix="gpufleet-ha-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    b = Bench.__new__(Bench)
    b.procs, b.bin = [], f"{work}/gpufleet"
    try:
        b.__init__(work)
        before = b.replicas()
        results = {"kill -9": [], "graceful": []}
        changed = 0
        loads = {"kill -9": [], "graceful": []}
        for label, sig in [("kill -9", signal.SIGKILL), ("graceful", signal.SIGTERM)]:
            if label not in os.environ.get("EVENTS", "kill -9,graceful").split(","):
                continue
            for i in range(RUNS):
                leader_s, agents_s, url, load = b.round(sig, i + 1)
                loads[label].append(load)
                if load["failed"]:
                    print(f"  {label} run {i + 1}: failed requests {load['failures']}", file=sys.stderr)
                # Past the new leader's reconnect grace: nothing may have moved.
                time.sleep(2)
                now = b.replicas(url)
                if now != before:
                    changed += 1
                    print(f"  {label} run {i + 1}: replicas changed: {before} -> {now}", file=sys.stderr)
                results[label].append((leader_s, agents_s))
                print(f"  {label} run {i + 1}: new leader {leader_s:.2f} s, agents re-attached {agents_s:.2f} s, "
                      f"requests {load['completed']}/{load['sent']}, max {load['max_s']} s", file=sys.stderr)
        print(f"\nlease {LEASE}, {RUNS} runs each; median (max), seconds after the signal\n")
        print("| event | new leader | agents re-attached |")
        print("|---|---|---|")
        for label, rs in results.items():
            if not rs:
                continue
            ls = [r[0] for r in rs]
            ag = [r[1] for r in rs]
            print(f"| gpufleet, {label} | {statistics.median(ls):.2f} ({max(ls):.2f}) "
                  f"| {statistics.median(ag):.2f} ({max(ag):.2f}) |")
        print(f"\nsteady load through the gateway, {RPS:g} req/s, {LOAD_S} s a round from 2 s before the signal:\n")
        print("| event | requests sent | failed | p50 | p99 | max |")
        print("|---|---|---|---|---|---|")
        for label, ls in loads.items():
            if not ls:
                continue
            sent = sum(x["sent"] for x in ls)
            failed = sum(x["failed"] for x in ls)
            p50 = statistics.median(x["p50_s"] for x in ls)
            p99 = max(x["p99_s"] for x in ls)
            mx = max(x["max_s"] for x in ls)
            print(f"| {label} | {sent} | {failed} | {p50:.3f} s | {p99:.3f} s | {mx:.3f} s |")
        print(f"\nrounds after which a replica was stopped, restarted, moved or duplicated: {changed} of {sum(map(len, results.values()))}")
    finally:
        b.close()
        if os.environ.get("KEEP"):
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
