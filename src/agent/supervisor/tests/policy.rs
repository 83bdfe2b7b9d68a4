//! What a replica may run and see: refused commands, allow-list, model roots,
//! environment, run_as.

use super::*;

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
