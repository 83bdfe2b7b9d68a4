//! Start, readiness, restart backoff, crash loops, stop and replacement.

use super::*;

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
async fn a_chatty_server_s_log_is_rotated_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 4096;
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec(
        "chatty",
        &[
            "/bin/sh",
            "-c",
            "head -c 20000 /dev/zero | tr '\\0' x; echo; exec sleep 1000",
        ],
    )]);
    until(&mut rx, 5, |s| of(s, "chatty").is_some_and(|r| r.pid != 0)).await;
    let replica_dir = dir.path().join("replicas/chatty");
    let rotated = replica_dir.join("server.log.1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rotated.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::metadata(&rotated).unwrap().len() > 20_000);
    assert!(
        std::fs::metadata(replica_dir.join("server.log"))
            .unwrap()
            .len()
            <= 4096
    );
    sup.stop_all().await;
}
