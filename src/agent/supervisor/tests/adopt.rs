//! Surviving an agent restart: adoption, stale records, records that cannot be written.

use super::*;

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
            metrics_port: 0,
            restarts: 4,
            state: ReplicaState::Ready,
            started_unix_ms: 1,
            ready_unix_ms: 2,
            failures: 0,
            next_restart_unix_ms: 0,
            reason: String::new(),
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
async fn dropping_every_handle_leaves_servers_running_for_the_next_agent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sup = Supervisor::spawn(cfg.clone()).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("orphan", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "orphan").is_some_and(|r| r.pid != 0)).await;
    let pid = of(&all, "orphan").unwrap().pid;
    drop(sup);
    // The owning task notices the closed channel and detaches.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(pid));
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let now = sup.subscribe().borrow().clone();
    assert_eq!(
        of(&now, "orphan").map(|r| (r.pid, r.state)),
        Some((pid, ReplicaState::Starting))
    );
    sup.stop_all().await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn the_assignment_token_is_kept_in_the_record_and_echoed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sup = Supervisor::spawn(cfg.clone()).await.unwrap();
    let mut rx = sup.subscribe();
    // From a coordinator that predates tokens: none.
    sup.apply(vec![spec("tok", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |s| of(s, "tok").is_some_and(|r| r.pid != 0)).await;
    let first = of(&all, "tok").unwrap().clone();
    assert_eq!(first.assignment_token, "");

    // The same spec with a token: kept, echoed, persisted; the server runs on.
    let signed = ReplicaSpec {
        assignment_token: "v1.abc".into(),
        ..spec("tok", &["sleep", "1000"])
    };
    sup.apply(vec![signed]);
    let all = until(&mut rx, 5, |s| {
        of(s, "tok").is_some_and(|r| r.assignment_token == "v1.abc")
    })
    .await;
    assert_eq!(of(&all, "tok").unwrap().pid, first.pid, "not restarted");
    let rec = record::load(&dir.path().join("replicas/tok")).unwrap();
    assert_eq!(rec.spec.assignment_token, "v1.abc");
    sup.detach().await;

    // A restarted agent says it again in its Hello.
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let now = sup.subscribe().borrow().clone();
    assert_eq!(of(&now, "tok").unwrap().assignment_token, "v1.abc");
    assert_eq!(of(&now, "tok").unwrap().pid, first.pid);
    sup.stop_all().await;
}
