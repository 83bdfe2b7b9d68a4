"""A throwaway fleet on loopback for the benchmark scripts: one coordinator and
one agent with simulated GPUs, each process written to a pid file so the
script's trap can end exactly those."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(pidfile, args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    with open(pidfile, "a") as f:
        f.write(f"{p.pid}\n")
    return p


class Fleet:
    """Writes the configs under `d` and starts the coordinator and the agent.

    `coordinator_extra` and `agent_extra` are more top-level TOML keys;
    `model_roots` the agent's roots."""

    def __init__(self, binary, pidfile, d, gpus, model_roots, coordinator_extra="", agent_extra=""):
        self.binary, self.pidfile, self.d = binary, pidfile, d
        os.makedirs(f"{d}/agent", exist_ok=True)
        self.grpc, self.http = free_port(), free_port()
        self.env = dict(os.environ, GPUFLEET_COORDINATOR=f"http://127.0.0.1:{self.grpc}")
        with open(f"{d}/coordinator.toml", "w") as f:
            f.write(
                f'listen = "127.0.0.1:{self.grpc}"\nhttp_listen = "127.0.0.1:{self.http}"\n'
                f'data_dir = "{d}/coordinator-data"\n{coordinator_extra}'
            )
        base = 20000 + (free_port() % 400) * 100
        roots = ", ".join(f'"{r}"' for r in model_roots)
        with open(f"{d}/agent/agent.toml", "w") as f:
            f.write(
                f'node_name = "bench-node"\ncoordinator = "http://127.0.0.1:{self.grpc}"\n'
                f'state_dir = "{d}/agent"\nhttp_listen = "127.0.0.1:{free_port()}"\n'
                f'model_roots = [{roots}]\nport_range = "{base}-{base + 99}"\n'
                # Servers run as whoever runs the benchmark, root on a GPU host.
                f'allow_root_replicas = true\n{agent_extra}'
                f'[gpu]\nbackend = "simulated"\nsimulated_count = {gpus}\n'
            )
        self.coordinator = spawn(pidfile, [binary, "coordinator", "--config", f"{d}/coordinator.toml"], f"{d}/coordinator.log")
        self.agent = spawn(pidfile, [binary, "agent", "--config", f"{d}/agent/agent.toml"], f"{d}/agent.log")
        for _ in range(100):
            if self.cli("node", "ls"):
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"the agent never joined the coordinator ({d})")

    def cli(self, *args):
        """`gpufleet ARGS -o json`, parsed; None when it fails."""
        r = subprocess.run([self.binary, *args, "-o", "json"], capture_output=True, text=True, env=self.env)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None

    def apply(self, spec_toml):
        path = f"{self.d}/model.toml"
        with open(path, "w") as f:
            f.write(spec_toml)
        r = subprocess.run([self.binary, "model", "apply", "-f", path], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise SystemExit(f"apply failed: {r.stderr}")

    def run(self, *args):
        subprocess.run([self.binary, *args], capture_output=True, env=self.env)


def stream_completion(port, body, timeout=120):
    """POSTs `body` (a dict) to 127.0.0.1:PORT/v1/completions with "stream":
    true; returns (HTTP status or None, seconds to the first SSE event or
    None)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        c.request("POST", "/v1/completions", json.dumps(dict(body, stream=True)),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        ttft = None
        for line in r:
            if ttft is None and line.startswith(b"data: "):
                ttft = time.monotonic() - t0
        return r.status, ttft
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        c.close()


def wait_for(what, f, within=120):
    """f()'s first truthy value, polled every 0.2 s; exits after `within` s."""
    for _ in range(within * 5):
        v = f()
        if v:
            return v
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def gateway_replicas(port):
    """Replicas in the routing table of the gateway on PORT (0 while it is
    not answering)."""
    try:
        s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2))
        return sum(len(m["replicas"]) for m in s["models"])
    except (OSError, ValueError):
        return 0
