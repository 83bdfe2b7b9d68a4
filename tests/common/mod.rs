//! Test harness: real `gpufleet` processes (coordinator, agents, CLI) on
//! loopback ports chosen at run time, in a temporary directory. Every process
//! is killed when the harness is dropped, so a failing test leaves nothing.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gpufleet");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`
/// with `what` and the last value seen.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// The agent's HTTP port (/metrics, fault injection), when it has one.
    pub http_port: u16,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then wait (SIGKILL after `grace`). Returns the exit code.
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dropping the harness kills every process that names its directory: the
/// model servers an agent leaves running by design, included.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            grpc_port: free_port(),
            http_port: free_port(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn coordinator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        spawn_program(self, name, BIN, args)
    }

    /// A coordinator with short windows; `extra` keys are added to its
    /// config or replace the harness's.
    pub fn coordinator(&self, extra: &str) -> Proc {
        let data = self.path("coordinator-data");
        let cfg = self.path("coordinator.toml");
        let base = format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ntick = \"200ms\"\nnode_suspect_after = \"2s\"\nnode_lost_after = \"4s\"\nreconnect_grace = \"1s\"\nretire_grace = \"3s\"\n",
            self.grpc_port,
            self.http_port,
            data.display()
        );
        std::fs::write(&cfg, overridden(&base, extra)).unwrap();
        self.spawn(
            "coordinator",
            &["coordinator", "--config", cfg.to_str().unwrap()],
        )
    }

    /// An agent with simulated GPUs; `extra` is appended to its config.
    pub fn agent(&self, name: &str, gpus: u32, extra: &str) -> Proc {
        self.agent_as(name, name, gpus, extra)
    }

    /// An agent whose process/log is `proc_name` but which claims `node_name`.
    pub fn agent_as(&self, proc_name: &str, node_name: &str, gpus: u32, extra: &str) -> Proc {
        self.agent_at(proc_name, node_name, gpus, &self.coordinator_url(), extra)
    }

    /// Runs the CLI against this harness's coordinator.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("GPUFLEET_COORDINATOR", self.coordinator_url())
            .output()
            .unwrap()
    }

    /// Runs the CLI with `-o json` and parses stdout; panics with stderr on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "gpufleet {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gpufleet {all:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Like `json`, but None when the command fails (the coordinator is
    /// still starting, say).
    pub fn try_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `replica ls --model MODEL` as JSON; empty while the coordinator does
    /// not answer.
    pub fn replicas_of(&self, model: &str) -> Vec<serde_json::Value> {
        self.try_json(&["replica", "ls", "--model", model])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The model's entry in `model ls`; `None` while there is none.
    pub fn model_of(&self, name: &str) -> Option<serde_json::Value> {
        self.try_json(&["model", "ls"])?
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    /// The fleet most tests start from: the harness's coordinator and one
    /// agent, `node-a`, with `gpus` simulated GPUs (`agent_extra` added to
    /// its config), ready. Returns (coordinator, agent).
    pub fn one_node_fleet(&self, gpus: u32, agent_extra: &str) -> (Proc, Proc) {
        let coordinator = self.coordinator("");
        let agent = self.agent("node-a", gpus, agent_extra);
        self.wait_ready_nodes(1);
        (coordinator, agent)
    }

    /// Waits until `n` nodes are ready (and so the coordinator answers).
    /// Seconds, usually; the bound is generous for a CI machine whose two
    /// cores are busy with a parallel test's llama.cpp load.
    pub fn wait_ready_nodes(&self, n: usize) -> serde_json::Value {
        wait_until(Duration::from_secs(60), &format!("{n} ready nodes"), || {
            let nodes = self.try_json(&["node", "ls"])?;
            (nodes_in_state(&nodes, "ready").len() == n).then_some(nodes)
        })
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Names of the nodes in `node ls -o json` that are in `state`.
pub fn nodes_in_state(nodes: &serde_json::Value, state: &str) -> Vec<String> {
    nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["state"] == state)
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A minimal HTTP/1.1 request on loopback: (status, body). Tests need no
/// HTTP client beyond this.
pub fn http(method: &str, port: u16, path: &str, body: &str) -> (u16, String) {
    try_http(method, port, path, "", body)
        .unwrap_or_else(|| panic!("nothing listens on 127.0.0.1:{port}"))
}

/// Like `http`, with extra header lines (each ending in `\r\n`); None when
/// nothing listens on the port (yet).
pub fn try_http(
    method: &str,
    port: u16,
    path: &str,
    headers: &str,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

// ---- TLS and tokens (tests/security.rs) ----

impl Harness {
    /// The coordinator's gRPC URL over TLS, by a name `tls init` puts in its
    /// certificate by default.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.grpc_port)
    }

    /// Like `agent_as`, but the agent reaches the coordinator at `url`.
    /// (`agent_as` is this with `coordinator_url()`.)
    pub fn agent_at(
        &self,
        proc_name: &str,
        node_name: &str,
        gpus: u32,
        url: &str,
        extra: &str,
    ) -> Proc {
        let (cfg, http_port) = self.write_agent_config(proc_name, node_name, gpus, url, extra);
        let mut p = self.spawn(proc_name, &["agent", "--config", cfg.to_str().unwrap()]);
        p.http_port = http_port;
        p
    }

    /// Writes an agent config under `agent-PROC/` and returns it with the
    /// agent's HTTP port; `extra` keys go at the top, `[tables]` after `[gpu]`.
    pub fn write_agent_config(
        &self,
        proc_name: &str,
        node_name: &str,
        gpus: u32,
        url: &str,
        extra: &str,
    ) -> (PathBuf, u16) {
        let state = self.path(&format!("agent-{proc_name}"));
        std::fs::create_dir_all(&state).unwrap();
        let models = self.path("models");
        std::fs::create_dir_all(&models).unwrap();
        let cfg = state.join("agent.toml");
        let http_port = free_port();
        // Each agent its own port range: agents of tests running at once
        // must not race for the same replica port. Below the kernel's
        // ephemeral ports (32768 and up), where the tests' client sockets
        // and `free_port()` listeners come from and could hold a replica's
        // port for a minute; 127 ranges of 100 taken in turn within a test
        // binary, from an offset per process.
        static NEXT_RANGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let slot = (std::process::id()
            + NEXT_RANGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            % 127;
        let base = 20000 + slot * 100;
        // Keys before the first `[table]` line go at the top; the rest after.
        let table_at = extra
            .lines()
            .scan(0, |offset, line| {
                let at = *offset;
                *offset += line.len() + 1;
                Some((at, line))
            })
            .find(|(_, line)| line.trim_start().starts_with('['))
            .map(|(at, _)| at);
        let (extra_top, extra_tables) = match table_at {
            Some(i) => (&extra[..i], &extra[i..]),
            None => (extra, ""),
        };
        // Model servers run as whoever runs the tests: root in CI containers.
        let top = format!(
            "node_name = \"{node_name}\"\ncoordinator = \"{url}\"\nstate_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\nreport_interval = \"200ms\"\nmodel_roots = [\"{}\"]\nport_range = \"{base}-{}\"\nallow_root_replicas = true\n",
            state.display(),
            models.display(),
            base + 99
        );
        std::fs::write(
            &cfg,
            format!(
                "{}\n[gpu]\nbackend = \"simulated\"\nsimulated_count = {gpus}\nsample_interval = \"200ms\"\n{extra_tables}",
                overridden(&top, extra_top)
            ),
        )
        .unwrap();
        (cfg, http_port)
    }

    /// Runs the CLI with exactly `env` for GPUFLEET_COORDINATOR,
    /// GPUFLEET_CA and GPUFLEET_TOKEN (those not given are unset).
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("GPUFLEET_CA")
            .env_remove("GPUFLEET_TOKEN")
            .env("GPUFLEET_COORDINATOR", self.coordinator_url());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// A `[tls]` table using `DIR/ca.pem`, `DIR/STEM.pem` and `DIR/STEM-key.pem`.
pub fn tls_table(dir: &Path, stem: &str) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join(format!("{stem}.pem")).display(),
        dir.join(format!("{stem}-key.pem")).display()
    )
}

/// Runs `gpufleet tls init --out DIR --agents AGENTS` and panics if it fails.
pub fn tls_init(dir: &Path, agents: &str) {
    let out = Command::new(BIN)
        .args([
            "tls",
            "init",
            "--out",
            dir.to_str().unwrap(),
            "--agents",
            agents,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "tls init failed: {}", stderr(&out));
}

// ---- model specs ----

/// `base` config lines, less those whose key `extra` sets, then `extra`.
pub fn overridden(base: &str, extra: &str) -> String {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let set: Vec<String> = extra.lines().filter(|l| l.contains('=')).map(key).collect();
    let mut out: String = base
        .lines()
        .filter(|l| !set.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(extra);
    out.push('\n');
    out
}

/// The command of a spec whose replicas are demo model servers; `extra` are
/// more arguments (`"--concurrency", "4"`), already quoted for TOML.
pub fn demo_command(extra: &[&str]) -> String {
    let mut args = vec![
        format!("\"{BIN}\""),
        "\"demo\"".into(),
        "\"server\"".into(),
        "\"--port\"".into(),
        "\"{port}\"".into(),
        "\"--weights\"".into(),
        "\"{weights}\"".into(),
    ];
    args.extend(extra.iter().map(|a| format!("\"{a}\"")));
    format!("[{}]", args.join(", "))
}

impl Harness {
    /// Writes `weights_mib` MiB of weights under the models root (synced to
    /// disk, as weights on shared storage are) and a spec for them: `top` goes
    /// before `[server]`, `tail` after it (more tables).
    pub fn model_spec(
        &self,
        name: &str,
        weights_mib: usize,
        top: &str,
        command: &str,
        tail: &str,
    ) -> PathBuf {
        let weights = self.path(&format!("models/{name}/weights.bin"));
        std::fs::create_dir_all(weights.parent().unwrap()).unwrap();
        std::fs::write(&weights, vec![7u8; weights_mib.max(1) << 20]).unwrap();
        std::fs::File::open(&weights).unwrap().sync_all().unwrap();
        self.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\nweights = \"{}\"\n{top}\n[server]\npreset = \"vllm\"\ncommand = {command}\ngpus = 1\ngpu_memory = \"10GiB\"\nready_timeout = \"30s\"\nstop_timeout = \"5s\"\n{tail}\n",
                weights.display()
            ),
        )
    }

    /// Applies a spec file through the CLI; panics with its error.
    pub fn apply(&self, spec: &Path) {
        let out = self.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "apply {}: {}",
            spec.display(),
            stderr(&out)
        );
    }
}

// ---------------------------------------------------------------------------
// Helpers for fleets that do not sit on loopback alone (tests/faults.rs): a
// coordinator on another address, agents started through another program
// (`ip netns exec`), the CLI pointed anywhere, and the cleanup of the model
// servers an agent leaves behind by design.
// ---------------------------------------------------------------------------

/// Runs the CLI against the coordinator at `url`.
pub fn cli_at(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("GPUFLEET_COORDINATOR", url)
        .output()
        .unwrap()
}

/// The CLI's `-o json` answer from the coordinator at `url`, or None when
/// the command fails.
pub fn json_at(url: &str, args: &[&str]) -> Option<serde_json::Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli_at(url, &all);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Writes a coordinator config like `Harness::coordinator`'s (same ports,
/// data dir and short windows) but with gRPC on `listen_host`.
pub fn coordinator_config_on(h: &Harness, listen_host: &str) -> PathBuf {
    let cfg = h.path("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen_host}:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ntick = \"200ms\"\nnode_suspect_after = \"2s\"\nnode_lost_after = \"4s\"\nreconnect_grace = \"1s\"\nretire_grace = \"3s\"\n",
            h.grpc_port,
            h.http_port,
            h.path("coordinator-data").display()
        ),
    )
    .unwrap();
    cfg
}

/// Writes an agent config like `Harness::agent`'s (simulated GPUs, state dir
/// `agent-NAME`) that dials `coordinator`; returns it and the agent's HTTP port.
pub fn agent_config_for(
    h: &Harness,
    node_name: &str,
    coordinator: &str,
    gpus: u32,
) -> (PathBuf, u16) {
    h.write_agent_config(node_name, node_name, gpus, coordinator, "")
}

/// Like `Harness::spawn`, for a program other than gpufleet (`ip netns exec
/// NS gpufleet …`, the load generator with its stdout kept).
pub fn spawn_program(h: &Harness, name: &str, program: &str, args: &[&str]) -> Proc {
    let log = h.path(&format!("{name}.log"));
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(program)
        .args(args)
        .env_remove("GPUFLEET_COORDINATOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc {
        name: name.to_string(),
        child,
        log,
        http_port: 0,
    }
}

/// Processes whose command line contains `needle`, this test's own excluded.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

pub fn pid_alive(pid: i64) -> bool {
    pid > 0 && unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Kills, when dropped, every process whose command line names the harness's
/// directory: the model servers its agents leave running by design (they
/// outlive an agent), and anything else the test started there. Declare it
/// right after the harness so it runs after every `Proc` is gone.
pub struct Reaper {
    needle: String,
}

impl Reaper {
    pub fn new(h: &Harness) -> Reaper {
        Reaper {
            needle: h.dir.path().display().to_string(),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // A process can fork while we look; a second pass catches it.
        for _ in 0..2 {
            for pid in pids_mentioning(&self.needle) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(Reaper::new(self));
    }
}

/// Asserts that `promtool check metrics` finds nothing to fix in `text` (the
/// `/metrics` of `what`). Where promtool is not installed it says SKIPPED
/// and returns; CI installs it (Debian `prometheus`) and must run the check.
pub fn assert_promtool_accepts(text: &str, what: &str) {
    use std::io::Write;
    let Ok(mut check) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have promtool (.ci/run installs Debian's prometheus)"
        );
        eprintln!("SKIPPED: promtool is not installed; the {what}'s /metrics went unchecked");
        return;
    };
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics:\n{said}"
    );
}
