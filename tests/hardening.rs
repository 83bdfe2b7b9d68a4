//! What a hostile network or an unlucky disk must not do to the fleet:
//! a damaged store is refused (never a new fleet, never a panic), an
//! unreadable model record keeps its replicas running, writes on the HTTP
//! port need a token, private keys must be private, bad config exits 64, and
//! a flood of connections from one client starves neither the CLI nor the
//! agents. Real processes on loopback throughout.

mod common;
#[path = "faults/tmpfs.rs"]
mod tmpfs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";
const WAKE: &str = "wake-0123456789abcdef";

fn store_file(h: &Harness) -> PathBuf {
    h.path("coordinator-data/gpufleet.redb")
}

/// A coordinator with a fresh log (the harness appends to one per name).
fn fresh_coordinator(h: &Harness, extra: &str) -> Proc {
    let _ = std::fs::remove_file(h.path("coordinator.log"));
    h.coordinator(extra)
}

/// Waits for the daemon to exit and returns (code, its `error:` lines).
fn exit_of(p: &mut Proc) -> (Option<i32>, Vec<String>) {
    let status = wait_until(Duration::from_secs(20), "the coordinator to exit", || {
        p.exited()
    });
    let lines = p
        .log_text()
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect();
    (status.code(), lines)
}

/// A spec whose replica is a demo model server; returns its path.
fn demo_spec(h: &Harness, name: &str) -> PathBuf {
    h.model_spec(name, 1, "replicas = 1", &demo_command(&[]), "")
}

fn model_row(h: &Harness, name: &str) -> Option<serde_json::Value> {
    h.try_json(&["model", "ls"])?
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// The pid of the model's one ready replica.
fn ready_pid(h: &Harness, model: &str) -> Option<i64> {
    let replicas = h.try_json(&["replica", "ls", "--model", model])?;
    let r = replicas.as_array()?.first()?.clone();
    (r["state"] == "ready").then(|| r["pid"].as_i64()).flatten()
}

#[test]
fn a_damaged_or_empty_store_stops_the_coordinator_with_one_line_and_a_snapshot_restores_it() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the coordinator", || {
        h.try_json(&["model", "ls"])
    });
    let spec = h.model_spec("kept", 1, "replicas = 0", "[\"/bin/sleep\", \"100\"]", "");
    h.apply(&spec);
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    // The next start snapshots the store as the last run left it.
    let mut c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the model after a restart", || {
        model_row(&h, "kept")
    });
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    let file = store_file(&h);
    let good = std::fs::read(&file).unwrap();

    for cut in [0usize, 512, good.len() / 2, good.len() - 4096] {
        std::fs::write(&file, &good[..cut]).unwrap();
        let mut c = fresh_coordinator(&h, "");
        let (code, errors) = exit_of(&mut c);
        assert_eq!(code, Some(1), "cut to {cut}: {}", c.log_text());
        assert_eq!(errors.len(), 1, "one line: {}", c.log_text());
        let e = &errors[0];
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("gpufleet coordinator restore"), "{e}");
        assert!(!c.log_text().contains("panicked"), "{}", c.log_text());
        // Refused, never rewritten as a new fleet.
        assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, cut);
    }

    // The snapshot of the last good start brings the fleet back.
    let snapshot = std::fs::read_dir(h.path("coordinator-data/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("gpufleet-")
        })
        .max()
        .expect("a snapshot from the first start");
    let data = h.path("coordinator-data");
    let out = h.cli(&[
        "coordinator",
        "restore",
        snapshot.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 models"), "{}", stdout(&out));
    let mut c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the restored model", || {
        model_row(&h, "kept")
    });

    // A running coordinator is backed up through its API, not torn and not
    // stopped; the copy is whole, and restores.
    let backup = h.path("backup.redb");
    let args = [
        "coordinator",
        "backup",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let out = h.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("running coordinator") && stdout(&out).contains("1 models"),
        "{}",
        stdout(&out)
    );
    assert!(!h.path("backup.redb.partial").exists());
    let out = h.cli(&args);
    assert!(
        !out.status.success(),
        "an existing file is never overwritten"
    );
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {} already exists; choose a new file name",
            backup.display()
        ),
        "said alone, not as a store in use"
    );
    assert!(model_row(&h, "kept").is_some(), "the coordinator runs on");

    h.apply(&h.model_spec("later", 1, "replicas = 0", "[\"/bin/sleep\", \"100\"]", ""));
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    let out = h.cli(&[
        "coordinator",
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the model of the backup", || {
        model_row(&h, "kept")
    });
    assert!(
        model_row(&h, "later").is_none(),
        "the state of the backup, not later"
    );
}

#[test]
fn a_model_whose_stored_record_is_damaged_keeps_its_replica_and_heals_on_apply() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    let _a = h.agent("gpu-1", 1, "");
    h.wait_ready_nodes(1);
    let spec = demo_spec(&h, "precious");
    h.apply(&spec);
    let pid = wait_until(Duration::from_secs(30), "a ready replica", || {
        ready_pid(&h, "precious")
    });
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));

    // Edit the stored spec in place: `replicas = 1` becomes 9.
    let file = store_file(&h);
    // The spec is stored as JSON: its newline is `\n`. Every copy is edited
    // (redb writes pages anew, so older copies may remain in free space).
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = b"replicas = 1\\n";
    let mut edited = 0;
    while let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
        bytes[at + 11] = b'9';
        edited += 1;
    }
    assert!(edited > 0, "the spec is stored as applied");
    std::fs::write(&file, &bytes).unwrap();

    let c = fresh_coordinator(&h, "");
    let mut row = None;
    for _ in 0..200 {
        row = model_row(&h, "precious").filter(|m| m["state"] == "invalid-stored-spec");
        if row.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = row.unwrap_or_else(|| {
        panic!(
            "no quarantined model: {:?}\n{}",
            h.try_json(&["model", "ls"]),
            c.log_text()
        )
    });
    assert!(
        row["placement_problem"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{row}"
    );
    // Well past the reconnect grace: the replica is untouched.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(ready_pid(&h, "precious"), Some(pid));
    assert!(pid_alive(pid));
    let events = h.json(&["events", "--model", "precious"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "model-quarantined"),
        "{events}"
    );
    assert!(!c.log_text().contains("replacing replica"));

    // Applying the spec again heals it; the same replica goes on serving.
    h.apply(&spec);
    let row = model_row(&h, "precious").unwrap();
    assert_eq!(row["state"], "active", "{row}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready_pid(&h, "precious"), Some(pid));
}

/// An HTTP/1.1 request with an optional bearer token: (status, body);
/// status 0 when nothing listens yet.
fn http_with(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    try_http(method, port, path, &auth, "").unwrap_or((0, String::new()))
}

fn tokens(h: &Harness) -> PathBuf {
    let p = h.write(
        "tokens",
        &format!("admin {ADMIN}\nread {READ}\nwake {WAKE}\n"),
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn wake_and_endpoints_need_a_token_when_tokens_are_set() {
    let h = Harness::new();
    let auth = format!("[auth]\ntokens_file = \"{}\"\n", tokens(&h).display());
    let _c = h.coordinator(&auth);
    let port = h.http_port;
    wait_until(Duration::from_secs(20), "the HTTP port", || {
        (http_with(port, "GET", "/healthz", None).0 == 200).then_some(())
    });
    let wake = "/v1/models/nope/wake";
    let (code, body) = http_with(port, "POST", wake, None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("requires a token"), "{body}");
    let (code, body) = http_with(port, "POST", wake, Some(READ));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("wake or admin"), "{body}");
    // Past the gate: the model is unknown.
    assert_eq!(http_with(port, "POST", wake, Some(WAKE)).0, 404);
    assert_eq!(http_with(port, "POST", wake, Some(ADMIN)).0, 404);
    assert_eq!(
        http_with(port, "POST", wake, Some("not-a-known-token-at-all")).0,
        401
    );

    assert_eq!(http_with(port, "GET", "/v1/endpoints", None).0, 401);
    for t in [READ, WAKE, ADMIN] {
        assert_eq!(http_with(port, "GET", "/v1/endpoints", Some(t)).0, 200);
    }
    // A wake token is for waking, not for the Control API's writes.
    let spec = h.model_spec("m", 1, "replicas = 0", "[\"/bin/sleep\", \"100\"]", "");
    let out = h.cli_env(
        &["model", "apply", "-f", spec.to_str().unwrap()],
        &[("GPUFLEET_TOKEN", WAKE)],
    );
    assert!(
        stderr(&out).contains("token may only wake models"),
        "{}",
        stderr(&out)
    );
    drop(_c);

    // For a Prometheus scraping the endpoints without a token.
    let h2 = Harness::new();
    let _c = h2.coordinator(&format!(
        "[auth]\ntokens_file = \"{}\"\n[http]\nanonymous_endpoints = true\n",
        tokens(&h2).display()
    ));
    wait_until(Duration::from_secs(20), "the HTTP port", || {
        (http_with(h2.http_port, "GET", "/v1/endpoints", None).0 == 200).then_some(())
    });
    assert_eq!(
        http_with(h2.http_port, "POST", "/v1/models/x/wake", None).0,
        401
    );
}

#[test]
fn a_private_key_others_can_read_stops_the_daemon_with_exit_64() {
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1");
    let key = dir.join("coordinator-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = fresh_coordinator(&h, &tls_table(&dir, "coordinator"));
    let (code, errors) = exit_of(&mut c);
    assert_eq!(code, Some(64), "{}", c.log_text());
    assert_eq!(errors.len(), 1, "{}", c.log_text());
    assert!(
        errors[0].contains(&key.display().to_string()),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("chmod 600"), "{}", errors[0]);

    let agent_key = dir.join("gpu-1-key.pem");
    std::fs::set_permissions(&agent_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut a = h.agent_at(
        "gpu-1",
        "gpu-1",
        1,
        &h.https_url(),
        &tls_table(&dir, "gpu-1"),
    );
    let status = wait_until(Duration::from_secs(20), "the agent to exit", || a.exited());
    assert_eq!(status.code(), Some(64), "{}", a.log_text());
    assert!(a.log_text().contains("chmod 600"), "{}", a.log_text());
}

#[test]
fn config_problems_found_at_start_exit_64() {
    let h = Harness::new();
    // A tokens file with a bad line.
    let bad = h.write("tokens", "admin short\n");
    let mut c = h.coordinator(&format!("[auth]\ntokens_file = \"{}\"\n", bad.display()));
    assert_eq!(exit_of(&mut c).0, Some(64), "{}", c.log_text());
    // A missing tokens file.
    let mut c = h.coordinator("[auth]\ntokens_file = \"/nonexistent/tokens\"\n");
    assert_eq!(exit_of(&mut c).0, Some(64), "{}", c.log_text());
    // TLS files that are not there.
    let mut c = h.coordinator(&tls_table(Path::new("/nonexistent"), "coordinator"));
    assert_eq!(exit_of(&mut c).0, Some(64), "{}", c.log_text());
    // An address that is not this host's.
    let mut c = h.coordinator("listen = \"192.0.2.1:7460\"\n");
    assert_eq!(exit_of(&mut c).0, Some(64), "{}", c.log_text());
    // A bad value in the file.
    let mut c = h.coordinator("[limits]\nmax_connections = 0\n");
    assert_eq!(exit_of(&mut c).0, Some(64), "{}", c.log_text());

    // The agent: a run_as user that does not exist, an address not this host's.
    for (name, extra) in [
        ("a1", "run_as = \"no-such-user-here\"\n"),
        ("a2", "http_listen = \"192.0.2.1:7462\"\n"),
    ] {
        let mut a = h.agent(name, 1, extra);
        let status = wait_until(Duration::from_secs(20), "the agent to exit", || a.exited());
        assert_eq!(status.code(), Some(64), "{}", a.log_text());
    }
}

/// Raises this test process's open-file limit (its children inherit it) to
/// at least `want`; false when the hard limit is lower.
fn raise_nofile(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_max < want {
            return false;
        }
        lim.rlim_cur = lim.rlim_cur.max(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// `idle` sockets on each of the coordinator's ports (connected, never a
/// byte sent) and `streams` FollowEvents streams held from one client over
/// 8 connections. Dropping it lets go of all of them.
struct Flood {
    _idle: Vec<tokio::net::TcpStream>,
    held: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    async fn hold(h: &Harness, idle: usize, streams: usize) -> Flood {
        let mut sockets = Vec::new();
        for port in [h.http_port, h.grpc_port] {
            for _ in 0..idle {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => sockets.push(s),
                    Err(e) => panic!("connect {} failed: {e}", sockets.len()),
                }
            }
        }
        let url = h.coordinator_url();
        let mut held = Vec::new();
        for _ in 0..8 {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap();
            for _ in 0..streams / 8 {
                let mut client =
                    gpufleet::wire::pb::control_client::ControlClient::new(channel.clone());
                let req = gpufleet::wire::pb::ListEventsRequest::default();
                held.push(tokio::spawn(async move {
                    if let Ok(stream) = client.follow_events(req).await {
                        let mut s = stream.into_inner();
                        while let Ok(Some(_)) = s.message().await {}
                    }
                }));
            }
        }
        Flood {
            _idle: sockets,
            held,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for t in &self.held {
            t.abort();
        }
    }
}

/// The `p`-th percentile (0..=100) of `samples`, sorted in place.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() - 1) * p / 100]
}

/// Benchmark for docs/BENCHMARKS.md, not a test: `gpufleet node ls`
/// latency with 1,100 idle sockets on each port and 1,000 held streams,
/// as a ratio to the same calls without them, three rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --test hardening -- --ignored --nocapture cli_latency_under_a_flood"]
async fn cli_latency_under_a_flood() {
    const CALLS: usize = 60;
    if !raise_nofile(8192) {
        eprintln!("SKIPPED: the open-file hard limit is below 8192");
        return;
    }
    let h = Harness::new();
    let c = fresh_coordinator(&h, "");
    let mut h = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "the coordinator", || {
            h.try_json(&["node", "ls"])
        });
        h
    })
    .await
    .unwrap();
    let timed = |h: Harness| {
        tokio::task::spawn_blocking(move || {
            let mut took = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t = std::time::Instant::now();
                let out = h.cli(&["node", "ls", "-o", "json"]);
                took.push(t.elapsed());
                assert!(out.status.success(), "{}", stderr(&out));
            }
            (h, took)
        })
    };
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let (back, mut base) = timed(h).await.unwrap();
        let flood = Flood::hold(&back, 1100, 1000).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (back, mut loaded) = timed(back).await.unwrap();
        drop(flood);
        h = back;
        let (b50, b95) = (percentile(&mut base, 50), percentile(&mut base, 95));
        let (l50, l95) = (percentile(&mut loaded, 50), percentile(&mut loaded, 95));
        let ratio = l95.as_secs_f64() / b95.as_secs_f64();
        println!(
            "round {round}: baseline p50 {b50:?} p95 {b95:?}; flooded p50 {l50:?} p95 {l95:?}; p95 ratio {ratio:.2}"
        );
        ratios.push(ratio);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ratios.sort_by(f64::total_cmp);
    println!("median p95 ratio (flooded / baseline): {:.2}", ratios[1]);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_and_held_streams_starves_neither_the_cli_nor_agents() {
    const IDLE: usize = 1100;
    const STREAMS: usize = 1000;
    if !raise_nofile(8192) {
        eprintln!(
            "SKIPPED: the open-file hard limit is below 8192; the flood needs ~2,500 sockets"
        );
        return;
    }
    let h = Harness::new();
    // Per-peer cap under the flood's size, so the cap bites (everything here
    // comes from 127.0.0.1, agents included).
    // Started as systemd would without LimitNOFILE: a soft limit of 1,024
    // open files, which the coordinator raises to its hard limit itself.
    let cfg = h.write(
        "flood.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ntick = \"200ms\"\nreconnect_grace = \"1s\"\n[limits]\nmax_connections_per_peer = 600\nheader_read_timeout = \"3s\"\n",
            h.grpc_port,
            h.http_port,
            h.path("coordinator-data").display()
        ),
    );
    let c = spawn_program(
        &h,
        "coordinator",
        "/bin/sh",
        &[
            "-c",
            &format!(
                "ulimit -Sn 1024 && exec {BIN} coordinator --config {}",
                cfg.display()
            ),
        ],
    );
    let h = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "the coordinator", || {
            h.try_json(&["node", "ls"])
        });
        h
    })
    .await
    .unwrap();

    let flood = Flood::hold(&h, IDLE, STREAMS).await;

    // The CLI answers, and a new agent joins, while all that is held.
    let h = tokio::task::spawn_blocking(move || {
        for _ in 0..5 {
            let out = h.cli(&["node", "ls", "-o", "json"]);
            assert!(
                out.status.success(),
                "the CLI under the flood: {}",
                stderr(&out)
            );
        }
        let a = h.agent("gpu-1", 1, "");
        h.wait_ready_nodes(1);
        let (code, metrics) = http("GET", h.http_port, "/metrics", "");
        assert_eq!(code, 200);
        (h, a, metrics)
    })
    .await
    .unwrap();
    let (h, _a, metrics) = h;
    let evicted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gpufleet_connections_closed_total") && l.contains("reason=\"evicted\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum::<u64>();
    assert!(evicted > 0, "the per-peer cap bit: {metrics}");
    assert!(
        c.log_text().contains("connection limit"),
        "a log line says why: {}",
        c.log_text()
    );
    drop(flood);
    drop(h);
}

#[test]
fn long_names_and_wrong_schemes_get_one_clear_line() {
    let h = Harness::new();
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the coordinator", || {
        h.try_json(&["model", "ls"])
    });
    // The command line takes 100 KiB (an argument may not exceed 128 KiB).
    let name = "a".repeat(100 << 10);
    for args in [
        vec!["model", "rm", name.as_str()],
        vec!["model", "show", name.as_str()],
        vec!["node", "cordon", name.as_str()],
    ] {
        let out = h.cli(&args);
        assert!(!out.status.success());
        let e = stderr(&out);
        assert_eq!(e.lines().count(), 1, "{}", &e[..e.len().min(500)]);
        assert!(
            e.len() < 1000,
            "the name is not echoed whole: {} bytes",
            e.len()
        );
        assert!(e.contains("(102,400 bytes)"), "{}", &e[..e.len().min(500)]);
        assert!(
            !e.contains("h2 protocol error") && !e.contains("metadata size"),
            "{e}"
        );
    }
    // 1 MiB straight through the API.
    let url = h.coordinator_url();
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = gpufleet::wire::pb::control_client::ControlClient::connect(url)
                .await
                .unwrap();
            c.get_model(gpufleet::wire::pb::ModelRef {
                name: "a".repeat(1 << 20),
            })
            .await
            .unwrap_err()
        });
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().len() < 1000);
    assert!(
        status.message().contains("(1,048,576 bytes)"),
        "{}",
        status.message()
    );

    // http:// against a TLS port.
    let t = Harness::new();
    let dir = t.path("tls");
    tls_init(&dir, "gpu-1");
    let _tc = t.coordinator(&tls_table(&dir, "coordinator"));
    wait_until(Duration::from_secs(20), "the TLS coordinator", || {
        std::net::TcpStream::connect(("127.0.0.1", t.grpc_port)).ok()
    });
    let out = t.cli(&["node", "ls"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!("use https://127.0.0.1:{}", t.grpc_port)),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // https:// against the plain port.
    let ca = dir.join("ca.pem");
    let plain = format!("https://127.0.0.1:{}", h.grpc_port);
    let out = h.cli_env(
        &["node", "ls"],
        &[
            ("GPUFLEET_COORDINATOR", &plain),
            ("GPUFLEET_CA", ca.to_str().unwrap()),
        ],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "does not speak TLS: use http://127.0.0.1:{}",
            h.grpc_port
        )),
        "{e}"
    );
}

#[test]
fn a_full_disk_degrades_the_store_and_it_recovers_without_a_restart() {
    let h = Harness::new();
    let data = h.path("coordinator-data");
    let disk = match tmpfs::SmallDisk::mount(&data, "8m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "SKIPPED: a_full_disk_degrades_the_store_and_it_recovers_without_a_restart: {why}"
            );
            return;
        }
    };
    let c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the coordinator", || {
        (http_with(h.http_port, "GET", "/healthz", None).0 == 200).then_some(())
    });
    let filler = disk.fill("filler");
    let spec = h.model_spec("m", 1, "replicas = 0", "[\"/bin/sleep\", \"100\"]", "");
    let out = wait_until(
        Duration::from_secs(20),
        "an apply refused for the full disk",
        || {
            let out = h.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
            (!out.status.success()).then_some(out)
        },
    );
    let e = stderr(&out);
    assert!(e.contains("is full"), "{e}");
    assert!(!e.contains("Previous I/O error"), "{e}");
    let (code, body) = wait_until(Duration::from_secs(20), "/healthz degraded", || {
        let r = http_with(h.http_port, "GET", "/healthz", None);
        (r.0 == 503).then_some(r)
    });
    assert_eq!(code, 503);
    assert!(body.contains("degraded: store: disk full"), "{body}");
    let (_, metrics) = http_with(h.http_port, "GET", "/metrics", None);
    assert!(metrics.contains("gpufleet_store_degraded 1"), "{metrics}");

    // Space returns: the next write reopens the store, no restart needed.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        Duration::from_secs(20),
        "an apply after space returned",
        || {
            h.cli(&["model", "apply", "-f", spec.to_str().unwrap()])
                .status
                .success()
                .then_some(())
        },
    );
    wait_until(Duration::from_secs(20), "/healthz ok again", || {
        (http_with(h.http_port, "GET", "/healthz", None).0 == 200).then_some(())
    });
    assert!(model_row(&h, "m").is_some());
    assert!(c.log_text().contains("store reopened"), "{}", c.log_text());
    drop(c);
}

#[test]
fn an_agent_session_and_a_followed_event_stream_are_never_closed_as_idle() {
    let h = Harness::new();
    let _c = h.coordinator("[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n");
    let a = h.agent("gpu-1", 1, "");
    h.wait_ready_nodes(1);
    let mut follow = std::process::Command::new(BIN)
        .args(["events", "--follow"])
        .env("GPUFLEET_COORDINATOR", h.coordinator_url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Several header and idle timeouts long.
    std::thread::sleep(Duration::from_secs(5));
    let (_, metrics) = http("GET", h.http_port, "/metrics", "");
    let closed: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gpufleet_connections_closed_total") && l.contains("listener=\"grpc\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(closed, 0, "{metrics}");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "events --follow was cut"
    );
    let connects = h
        .json(&["events", "--node", "gpu-1"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "node-connected")
        .count();
    assert_eq!(
        connects,
        1,
        "the agent's session was never cut: {}",
        a.log_text()
    );
    let _ = follow.kill();
    let _ = follow.wait();
}
