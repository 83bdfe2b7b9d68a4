//! The CLI as an operator used to kubectl drives it: flags before the noun,
//! every output format, watching a list, pipes that close early, and a
//! coordinator that hangs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SPEC: &str = r#"
name = "watched"
weights = "/srv/models/watched"
replicas = 0

[server]
preset = "vllm"
command = ["/bin/sleep", "1000"]
gpus = 1
gpu_memory = "20GiB"
"#;

/// Runs the CLI with exactly `args`: no GPUFLEET_COORDINATOR in its
/// environment, so only flags can say where the coordinator is.
fn bare(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("GPUFLEET_COORDINATOR")
        .output()
        .unwrap()
}

#[test]
fn global_flags_go_before_the_noun_and_every_format_shows_the_same_list() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "[labels]\nrack = \"r1\"\n");
    let url = h.coordinator_url();

    let json = bare(&["--coordinator", &url, "-o", "json", "node", "ls"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json[0]["name"], "node-a");

    let yaml = bare(&["node", "--coordinator", &url, "ls", "-o", "yaml"]);
    assert!(yaml.status.success(), "{}", stderr(&yaml));
    let yaml: serde_json::Value = serde_yaml::from_slice(&yaml.stdout).unwrap();
    assert_eq!(yaml[0]["name"], json[0]["name"]);
    assert_eq!(yaml[0]["gpus"], json[0]["gpus"]);

    let wide = bare(&["-o", "wide", "--coordinator", &url, "node", "ls"]);
    let wide = stdout(&wide);
    let header = wide.lines().next().unwrap();
    assert!(
        header.contains("LABELS") && header.contains("CPUS"),
        "{wide}"
    );
    assert!(wide.contains("rack=r1"), "{wide}");
    let narrow = stdout(&bare(&["--coordinator", &url, "node", "ls"]));
    assert!(!narrow.contains("LABELS"), "{narrow}");

    let version = bare(&["--coordinator", &url, "version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(version["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["coordinator"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_pipe_closed_early_ends_the_command_quietly() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "");
    // `gpufleet node ls -o json | head -c0`: the reader is gone before the
    // CLI prints anything.
    let mut child = Command::new(BIN)
        .args(["node", "ls", "-o", "json"])
        .env("GPUFLEET_COORDINATOR", h.coordinator_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    // 141 is what a shell reports for a command ended by a closed pipe.
    assert!(
        out.status.success() || out.status.code() == Some(141),
        "exit {:?}: {err}",
        out.status
    );
}

#[test]
fn a_hung_coordinator_is_named_within_the_request_timeout() {
    // Accepts connections (the kernel does, from the backlog) but never speaks.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = bare(&[
        "--request-timeout",
        "1s",
        "--coordinator",
        &url,
        "model",
        "ls",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&url), "the error names the address: {err}");
    assert!(err.contains("did not answer within 1s"), "{err}");
    // Generous: the point is that 1s is honoured, not the default.
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    drop(hung);
}

#[test]
fn watch_prints_the_list_again_when_it_changes() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "");
    let mut watch = Command::new(BIN)
        .args([
            "model",
            "ls",
            "--watch",
            "--watch-interval",
            "200ms",
            "-o",
            "json",
        ])
        .env("GPUFLEET_COORDINATOR", h.coordinator_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "[]", "one compact document per line");
    let spec = h.write("watched.toml", SPEC);
    let applied = h.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let next = lines.next().unwrap().unwrap();
    let models: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(models[0]["name"], "watched", "{next}");
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[test]
fn the_coordinators_http_port_given_for_its_grpc_port_is_named_as_such() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    let port: u16 = h.http_url().rsplit(':').next().unwrap().parse().unwrap();
    wait_until(Duration::from_secs(30), "coordinator HTTP up", || {
        (try_http("GET", port, "/healthz", "", "")?.0 == 200).then_some(())
    });
    // The easy slip: the HTTP port (7461) where the gRPC one (7460) belongs.
    let url = h.http_url();
    let out = bare(&["--coordinator", &url, "node", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&url), "the error names the address: {err}");
    assert!(err.contains("HTTP 404 without gRPC"), "{err}");
    assert!(err.contains("gRPC port"), "{err}");
    c.stop(Duration::from_secs(5));
}

#[test]
fn a_coordinator_or_gateway_url_without_its_scheme_is_a_usage_error() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    // `host:port` as curl takes it: refused at once, naming the fix, even
    // when a coordinator listens there.
    let bare_url = h.coordinator_url().replacen("http://", "", 1);
    let out = bare(&["--coordinator", &bare_url, "node", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("has no scheme; use http://{bare_url}")),
        "{}",
        stderr(&out)
    );
    let out = bare(&["gateway", "status", "--gateway", "127.0.0.1:7470"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the gateway URL `127.0.0.1:7470` has no scheme"),
        "{}",
        stderr(&out)
    );
    c.stop(Duration::from_secs(5));
}

#[test]
fn following_events_ends_with_an_error_when_the_coordinator_goes_away() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    wait_until(Duration::from_secs(30), "the coordinator answering", || {
        h.try_json(&["events"])
    });
    let mut follow = Command::new(BIN)
        .args(["events", "--follow"])
        .env("GPUFLEET_COORDINATOR", h.coordinator_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follow is open once the past events are printed.
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("coordinator started"), "{first}");
    c.stop(Duration::from_secs(10));
    let status = wait_until(Duration::from_secs(30), "the follow to end", || {
        follow.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("ended the event stream"), "{err}");
}

#[test]
fn a_spec_piped_to_apply_dash_f_dash_is_read_from_stdin() {
    use std::io::Write;
    let h = Harness::new();
    let mut c = h.coordinator("");
    let apply = |spec: &str| {
        let mut child = Command::new(BIN)
            .args(["model", "apply", "-f", "-"])
            .env("GPUFLEET_COORDINATOR", h.coordinator_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(spec.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = wait_until(Duration::from_secs(30), "the coordinator answering", || {
        let out = apply(SPEC);
        out.status.success().then_some(out)
    });
    assert!(
        stdout(&out).contains("model watched applied"),
        "{}",
        stdout(&out)
    );
    let out = apply("name = \"watched\"\nbogus = 1\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: stdin: line 2: unknown key `bogus`"),
        "{}",
        stderr(&out)
    );
    c.stop(Duration::from_secs(5));
}

#[test]
fn bench_swarm_flags_out_of_range_are_usage_errors() {
    // Refused before any coordinator is dialled.
    let out = bare(&[
        "--coordinator",
        "http://127.0.0.1:9",
        "bench",
        "swarm",
        "--agents",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--agents 0 is out of range; allowed: 1..=100000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tls_init_and_demo_load_flags_out_of_range_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = bare(&["tls", "init", "--out", out_dir, "--days", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--days 0 is out of range; allowed: 1..="),
        "{}",
        stderr(&out)
    );
    let out = bare(&["tls", "init", "--out", out_dir, "--agents", "a/b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Nothing was half-written by the refused runs.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let out = bare(&[
        "demo",
        "load",
        "--rps",
        "0",
        "--duration",
        "1s",
        "--url",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--rps and --ramp-to are both 0"),
        "{}",
        stderr(&out)
    );
    let out = bare(&[
        "demo",
        "load",
        "--rps",
        "1",
        "--duration",
        "1s",
        "--url",
        "ftp://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
