//! The supervisor against real processes: `sh` scripts and `sleep` as model
//! servers, in-test listeners for readiness, backoff shortened to ~100 ms.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::process::{self, group_members};
use super::record::{self, ReplicaRecord};
use super::*;
use crate::domain::{ReplicaSpec, ReplicaState, ReplicaStatus};

/// Each test gets its own block of ports, so parallel tests never race for
/// the port a replica was given.
fn port_block() -> RangeInclusive<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 41000 + (std::process::id() % 100) as u16 * 200;
    let start = base + NEXT.fetch_add(20, Ordering::Relaxed);
    start..=start + 19
}

fn config(state_dir: &Path) -> SupervisorConfig {
    SupervisorConfig {
        port_range: port_block(),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(2),
        ..SupervisorConfig::new(state_dir)
    }
}

fn spec(id: &str, command: &[&str]) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_string(),
        model: "m".to_string(),
        spec_hash: "h1".to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        gpus: vec![0],
        ready_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

fn of<'a>(all: &'a [ReplicaStatus], id: &str) -> Option<&'a ReplicaStatus> {
    all.iter().find(|s| s.id == id)
}

/// Waits until `pred` holds for the published statuses; panics with the last
/// ones seen after `secs`.
async fn until(
    rx: &mut watch::Receiver<Vec<ReplicaStatus>>,
    secs: u64,
    pred: impl Fn(&[ReplicaStatus]) -> bool,
) -> Vec<ReplicaStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = rx.borrow_and_update().clone();
        if pred(&now) {
            return now;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("condition not met within {secs}s; statuses: {now:#?}");
        }
    }
}

fn alive(pid: u32) -> bool {
    process::proc_stat(pid).is_ok_and(|s| s.state != 'Z')
}

/// A just-spawned process shows its new argv a moment after exec returns.
async fn settled_cmdline(pid: u32) -> Vec<String> {
    for _ in 0..100 {
        let argv = process::cmdline(pid).unwrap_or_default();
        if !argv.is_empty() {
            return argv;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Vec::new()
}

/// A stand-in for a model server's port: accepts connections, answers HTTP
/// requests with `statuses` in turn (the last one repeated).
async fn serve(port: u16, statuses: Vec<&'static str>) -> tokio::task::JoinHandle<usize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let status = statuses[served.min(statuses.len() - 1)];
            served += 1;
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                if n > 0 {
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            }
        }
        served
    })
}

#[tokio::test]
async fn starts_gets_ready_over_tcp_and_stops_when_unassigned() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("r1", &["sleep", "1000"])]);
    let s = until(&mut rx, 5, |s| of(s, "r1").is_some_and(|r| r.pid != 0)).await;
    let r1 = of(&s, "r1").unwrap().clone();
    assert_eq!(r1.state, ReplicaState::Starting);
    assert_ne!(r1.port, 0);
    let record_path = dir.path().join("replicas/r1/record.json");
    assert!(record_path.exists());

    let _server = serve(r1.port as u16, vec!["200 OK"]).await;
    let s = until(&mut rx, 5, |s| {
        of(s, "r1").is_some_and(|r| r.state == ReplicaState::Ready)
    })
    .await;
    assert!(of(&s, "r1").unwrap().ready_unix_ms > 0);
    assert_eq!(
        record::load(&dir.path().join("replicas/r1")).unwrap().state,
        ReplicaState::Ready
    );

    sup.apply(vec![]);
    until(&mut rx, 5, |s| s.is_empty()).await;
    assert!(!alive(r1.pid), "server stopped");
    assert!(group_members(r1.pid).is_empty());
    assert!(!record_path.exists(), "record removed");
    let log = read_log_tail(dir.path(), "r1", 50).unwrap().join("\n");
    assert!(
        log.contains("starting on port") && log.contains("stopped"),
        "{log}"
    );
    sup.stop_all().await;
}

#[tokio::test]
async fn http_readiness_waits_for_a_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let mut s = spec("web", &["sleep", "1000"]);
    s.health_path = "/health".into();
    sup.apply(vec![s]);
    let all = until(&mut rx, 5, |s| of(s, "web").is_some_and(|r| r.port != 0)).await;
    let port = of(&all, "web").unwrap().port as u16;
    let server = serve(
        port,
        vec![
            "503 Service Unavailable",
            "503 Service Unavailable",
            "200 OK",
        ],
    )
    .await;
    let started = Instant::now();
    until(&mut rx, 5, |s| {
        of(s, "web").is_some_and(|r| r.state == ReplicaState::Ready)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "two 503s were not taken as ready"
    );
    sup.stop_all().await;
    server.abort();
}

#[tokio::test]
async fn child_gets_its_gpus_env_port_log_and_group_but_not_the_agents_secrets() {
    // SAFETY (edition 2021: safe): other tests only read these, and none of
    // them may reach a child either.
    std::env::set_var("GPUFLEET_TOKEN", "secret-admin-token");
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.out");
    let script = format!(
        "echo hello-from-server; echo port={{port}} > {o}.port; env > {o}.tmp && mv {o}.tmp {o}; exec sleep 1000",
        o = out.display()
    );
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let mut s = spec("envy", &["/bin/sh", "-c", &script]);
    s.gpus = vec![1, 3];
    s.env = BTreeMap::from([(
        "GREETING".into(),
        "hello {replica_id} on {gpus} ({gpu_count})".into(),
    )]);
    sup.apply(vec![s]);
    let all = until(&mut rx, 5, |s| of(s, "envy").is_some_and(|r| r.pid != 0)).await;
    let envy = of(&all, "envy").unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(
        env.lines().any(|l| l == "CUDA_VISIBLE_DEVICES=1,3"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "GREETING=hello envy on 1,3 (2)"),
        "{env}"
    );
    assert!(
        !env.contains("GPUFLEET_TOKEN") && !env.contains("NOTIFY_SOCKET"),
        "{env}"
    );
    let port_line = std::fs::read_to_string(format!("{}.port", out.display())).unwrap();
    assert_eq!(port_line.trim(), format!("port={}", envy.port));

    let stat = process::proc_stat(envy.pid).unwrap();
    assert_eq!(stat.pgrp as u32, envy.pid, "leads its own process group");
    let log = read_log_tail(dir.path(), "envy", 10).unwrap();
    assert!(log.iter().any(|l| l == "hello-from-server"), "{log:?}");
    assert!(matches!(
        read_log_tail(dir.path(), "../envy", 10),
        Err(SupervisorError::InvalidReplicaId { .. })
    ));
    assert!(matches!(
        read_log_tail(dir.path(), "nobody-here", 10),
        Err(SupervisorError::NoLog { .. })
    ));
    sup.stop_all().await;
    assert!(!alive(envy.pid));
}

#[tokio::test]
async fn a_killed_server_is_restarted_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("k", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "k").is_some_and(|r| r.pid != 0)).await;
    let first = of(&all, "k").unwrap().pid;
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let all = until(&mut rx, 5, |s| {
        of(s, "k").is_some_and(|r| r.pid != 0 && r.pid != first && r.restarts == 1)
    })
    .await;
    let k = of(&all, "k").unwrap();
    assert!(k.reason.contains("killed by SIGKILL"), "{}", k.reason);
    assert!(alive(k.pid) && !alive(first));
    sup.stop_all().await;
}

#[tokio::test]
async fn a_crash_loop_backs_off_instead_of_forking_a_storm() {
    let dir = tempfile::tempdir().unwrap();
    let launches = dir.path().join("launches");
    let script = format!("date +%s%N >> {}; exit 3", launches.display());
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("crashy", &["/bin/sh", "-c", &script])]);
    let all = until(&mut rx, 5, |s| {
        of(s, "crashy").is_some_and(|r| r.state == ReplicaState::Crashloop)
    })
    .await;
    let c = of(&all, "crashy").unwrap();
    assert!(c.reason.contains("exited with code 3"), "{}", c.reason);
    assert!(c.next_restart_unix_ms > crate::domain::unix_ms_now() - 1000);
    // 100 ms doubling: launches at about 0, 0.1, 0.3, 0.7, 1.5 s.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let stamps: Vec<u128> = std::fs::read_to_string(&launches)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        (4..=7).contains(&stamps.len()),
        "launches: {}",
        stamps.len()
    );
    let gaps: Vec<u128> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0], "delays must grow: {gaps:?}");
    }
    assert!(of(&rx.borrow(), "crashy").unwrap().restarts >= 3);
    sup.stop_all().await;
}

#[tokio::test]
async fn stop_kills_a_server_that_ignores_sigterm_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let mut s = spec(
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; sleep 1000 & sleep 1000; wait",
        ],
    );
    s.stop_timeout = Duration::from_millis(500);
    sup.apply(vec![s]);
    let all = until(&mut rx, 5, |s| {
        of(s, "stubborn").is_some_and(|r| r.pid != 0)
    })
    .await;
    let pid = of(&all, "stubborn").unwrap().pid;
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_members(pid).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(group_members(pid).len(), 3, "sh and its two sleeps");
    let started = Instant::now();
    sup.stop_all().await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "SIGTERM was ignored, so the grace ran out"
    );
    assert!(
        group_members(pid).is_empty(),
        "no process of the group remains"
    );
    let log = read_log_tail(dir.path(), "stubborn", 10)
        .unwrap()
        .join("\n");
    assert!(log.contains("SIGKILL"), "{log}");
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_servers_and_watches_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sup = Supervisor::spawn(cfg.clone()).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("keep", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "keep").is_some_and(|r| r.pid != 0)).await;
    let first = of(&all, "keep").unwrap().clone();
    let _server = serve(first.port as u16, vec!["200 OK"]).await;
    until(&mut rx, 5, |s| {
        of(s, "keep").is_some_and(|r| r.state == ReplicaState::Ready)
    })
    .await;
    sup.detach().await;
    assert!(alive(first.pid), "detach leaves servers running");

    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    let now = rx.borrow().clone();
    let adopted = of(&now, "keep").unwrap();
    assert_eq!(
        (adopted.pid, adopted.port, adopted.restarts),
        (first.pid, first.port, 0)
    );
    assert_eq!(adopted.state, ReplicaState::Ready);
    // The same assignment again changes nothing: no second copy.
    sup.apply(vec![spec("keep", &["sleep", "1000"])]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = rx.borrow().clone();
    assert_eq!(now.len(), 1);
    assert_eq!(of(&now, "keep").unwrap().pid, first.pid);

    kill(Pid::from_raw(first.pid as i32), Signal::SIGKILL).unwrap();
    let all = until(&mut rx, 5, |s| {
        of(s, "keep").is_some_and(|r| r.pid != 0 && r.pid != first.pid && r.restarts == 1)
    })
    .await;
    assert!(alive(of(&all, "keep").unwrap().pid));
    sup.stop_all().await;
}

#[tokio::test]
async fn dead_or_reused_records_are_reported_once_and_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let mut done = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = done.id();
    done.wait().unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let by_pid = bystander.id();
    let by_start = process::proc_stat(by_pid).unwrap().start_time;
    let write = |id: &str, pid: u32, start_time: u64, argv: &[&str]| {
        let rec = ReplicaRecord {
            spec: spec(id, argv),
            pid,
            start_time,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            executable: String::new(),
            port: 41999,
            restarts: 4,
            state: ReplicaState::Ready,
            started_unix_ms: 1,
            ready_unix_ms: 2,
        };
        record::save(&dir.path().join("replicas").join(id), &rec).unwrap();
    };
    write("dead", dead_pid, 1, &["true"]);
    write("reused", by_pid, by_start + 1, &["sleep", "1000"]);
    write("other-argv", by_pid, by_start, &["sleep", "999"]);

    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let now = rx.borrow().clone();
    assert_eq!(now.len(), 3, "{now:#?}");
    for s in &now {
        assert_eq!(s.state, ReplicaState::Failed);
        assert_eq!(s.pid, 0);
        assert!(
            s.reason.contains("exited while the agent was away"),
            "{}",
            s.reason
        );
        assert!(!dir
            .path()
            .join("replicas")
            .join(&s.id)
            .join("record.json")
            .exists());
    }
    assert!(of(&now, "reused")
        .unwrap()
        .reason
        .contains("another process"));
    assert!(alive(by_pid), "a process that is not ours is left alone");

    // Reported once: the next assignment no longer carries them. One of them
    // is still wanted, so it starts again, counting as a restart.
    sup.apply(vec![spec("dead", &["sleep", "1000"])]);
    let now = until(&mut rx, 5, |s| s.len() == 1 && s[0].pid != 0).await;
    assert_eq!((now[0].id.as_str(), now[0].restarts), ("dead", 5));
    sup.stop_all().await;
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn bad_commands_fail_with_a_reason_and_leave_others_running() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("server.sh");
    std::fs::write(&not_exec, "#!/bin/sh\nsleep 1000\n").unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let desired = vec![
        spec("typo", &["sleep", "{model}"]),
        spec("noexec", &[not_exec.to_str().unwrap()]),
        spec("missing", &["gpufleet-no-such-server"]),
        spec("good", &["sleep", "1000"]),
        spec("../escape", &["sleep", "1000"]),
    ];
    sup.apply(desired.clone());
    let all = until(&mut rx, 5, |s| {
        s.len() == 5 && of(s, "good").is_some_and(|r| r.pid != 0)
    })
    .await;
    let reason = |id: &str| of(&all, id).unwrap().reason.clone();
    for id in ["typo", "noexec", "missing", "../escape"] {
        assert_eq!(of(&all, id).unwrap().state, ReplicaState::Failed, "{id}");
    }
    assert!(
        reason("typo").contains("{model}") && reason("typo").contains("{port}"),
        "{}",
        reason("typo")
    );
    assert!(
        reason("noexec").contains("not executable"),
        "{}",
        reason("noexec")
    );
    assert!(
        reason("missing").contains("not found on PATH"),
        "{}",
        reason("missing")
    );
    assert!(
        reason("../escape").contains("invalid replica id"),
        "{}",
        reason("../escape")
    );
    assert!(!dir.path().join("escape").exists());
    let good = of(&all, "good").unwrap().pid;

    // Level-triggered: the same assignment again changes nothing.
    sup.apply(desired);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = rx.borrow().clone();
    assert_eq!(of(&now, "good").unwrap().pid, good);
    assert_eq!(of(&now, "typo").unwrap().state, ReplicaState::Failed);
    sup.stop_all().await;
}

#[tokio::test]
async fn allow_list_and_model_roots_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("models");
    std::fs::create_dir_all(roots.join("m1")).unwrap();
    let sh = launch::resolve_executable("sh").unwrap();
    let mut cfg = config(dir.path());
    cfg.allowed_executables = vec![sh];
    cfg.model_roots = vec![roots.clone()];
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    let mut inside = spec(
        "inside",
        &["/bin/sh", "-c", "sleep 1000; true", "{weights}"],
    );
    inside.weights = roots.join("m1").display().to_string();
    let mut outside = spec("outside", &["/bin/sh", "-c", "exec sleep 1000"]);
    outside.weights = "/etc".into();
    sup.apply(vec![spec("other", &["sleep", "1000"]), inside, outside]);
    let all = until(&mut rx, 5, |s| {
        s.len() == 3 && of(s, "inside").is_some_and(|r| r.pid != 0)
    })
    .await;
    let other = of(&all, "other").unwrap();
    assert_eq!(other.state, ReplicaState::Failed);
    assert!(
        other.reason.contains("allowed_executables"),
        "{}",
        other.reason
    );
    let outside = of(&all, "outside").unwrap();
    assert_eq!(outside.state, ReplicaState::Failed);
    assert!(
        outside.reason.contains("outside the model roots"),
        "{}",
        outside.reason
    );
    // The shell stays (two commands), so its argv still ends with the weights.
    let argv = settled_cmdline(of(&all, "inside").unwrap().pid).await;
    let resolved = roots.canonicalize().unwrap().join("m1");
    assert_eq!(
        argv.last(),
        Some(&resolved.display().to_string()),
        "{argv:?}"
    );
    sup.stop_all().await;
}

#[tokio::test]
async fn a_changed_spec_replaces_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("r", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "r").is_some_and(|r| r.pid != 0)).await;
    let old = of(&all, "r").unwrap().pid;
    let mut newer = spec("r", &["sleep", "1001"]);
    newer.spec_hash = "h2".into();
    sup.apply(vec![newer]);
    let all = until(&mut rx, 5, |s| {
        of(s, "r").is_some_and(|r| r.spec_hash == "h2" && r.pid != 0 && r.pid != old)
    })
    .await;
    assert!(
        !alive(old),
        "the old server is stopped before the new one starts"
    );
    let r = of(&all, "r").unwrap();
    assert_eq!(r.restarts, 0);
    assert_eq!(
        process::proc_stat(r.pid).map(|s| s.state != 'Z').ok(),
        Some(true)
    );
    sup.stop_all().await;
}

#[tokio::test]
async fn a_server_not_ready_in_time_is_stopped_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    let mut s = spec("slow", &["sleep", "1000"]);
    s.ready_timeout = Duration::from_millis(300);
    sup.apply(vec![s]);
    let all = until(&mut rx, 5, |s| {
        of(s, "slow").is_some_and(|r| r.restarts >= 1)
    })
    .await;
    let slow = of(&all, "slow").unwrap();
    assert!(
        slow.reason.contains("not ready within ready_timeout"),
        "{}",
        slow.reason
    );
    sup.stop_all().await;
}

#[tokio::test]
async fn a_record_that_cannot_be_written_does_not_stop_supervision() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the temp record goes fails every write, as ENOSPC would.
    let blocker = dir.path().join("replicas/full/record.json.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![
        spec("full", &["sleep", "1000"]),
        spec("fine", &["sleep", "1000"]),
    ]);
    let all = until(&mut rx, 5, |s| {
        of(s, "full").is_some_and(|r| r.pid != 0 && r.reason.contains("state not persisted"))
            && of(s, "fine").is_some_and(|r| r.pid != 0)
    })
    .await;
    assert!(alive(of(&all, "full").unwrap().pid));
    assert!(of(&all, "fine").unwrap().reason.is_empty());
    std::fs::remove_dir(&blocker).unwrap();
    until(&mut rx, 5, |s| {
        of(s, "full").is_some_and(|r| !r.reason.contains("state not persisted"))
    })
    .await;
    assert!(dir.path().join("replicas/full/record.json").exists());
    sup.stop_all().await;
}

#[tokio::test]
async fn run_as_drops_privileges_and_refuses_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.run_as = Some("root".into());
    assert!(matches!(
        Supervisor::spawn(cfg.clone()).await,
        Err(SupervisorError::RunAs(_))
    ));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED run_as_drops_privileges: needs root to switch users");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("SKIPPED run_as_drops_privileges: no user 'nobody' on this host");
        return;
    };
    cfg.run_as = Some("nobody".into());
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("unpriv", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "unpriv").is_some_and(|r| r.pid != 0)).await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", of(&all, "unpriv").unwrap().pid))
            .unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.to_string()),
        "{uid_line}"
    );
    sup.stop_all().await;
}
