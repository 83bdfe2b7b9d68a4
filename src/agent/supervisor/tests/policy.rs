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
        spec("typo", &["sleep", "{model_name}"]),
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
        reason("typo").contains("{model_name}") && reason("typo").contains("{port}"),
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
    // Its supplementary groups are the user's own (video and render for
    // gpufleet-models), not root's and not none.
    let groups_line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    let mut shown: Vec<u32> = groups_line
        .split_whitespace()
        .skip(1)
        .map(|g| g.parse().unwrap())
        .collect();
    let mut expected = launch::resolve_run_as("nobody").unwrap().groups;
    shown.sort();
    expected.sort();
    expected.dedup();
    assert_eq!(shown, expected, "{groups_line}");
    sup.stop_all().await;
}

/// Builds a shared object that, once loaded into any process, writes
/// `mark`; None (after a loud SKIPPED) without a C compiler.
fn evil_library(dir: &Path, mark: &Path) -> Option<std::path::PathBuf> {
    let Ok(cc) = launch::resolve_executable("cc") else {
        eprintln!("SKIPPED preload test: no C compiler (cc) on PATH to build the library");
        return None;
    };
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) {{ fputs(\"foreign code ran\\n\", f); fclose(f); }} }}\n",
            mark.display()
        ),
    )
    .unwrap();
    let lib = dir.join("libevil.so");
    let out = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(lib)
}

#[tokio::test]
async fn a_preloaded_library_is_refused_unless_allowed_env_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("models/m");
    std::fs::create_dir_all(&weights).unwrap();
    let mark = dir.path().join("injected");
    // The library sits in the weights directory, as an attacker who can
    // write weights would put it.
    let Some(_lib) = evil_library(&weights, &mark) else {
        return;
    };
    let sleep = launch::resolve_executable("sleep").unwrap();
    let mut cfg = config(dir.path());
    cfg.allowed_executables = vec![sleep.clone()];
    cfg.model_roots = vec![dir.path().join("models")];
    let mut s = spec("preload", &[sleep.to_str().unwrap(), "1000"]);
    s.weights = weights.display().to_string();
    s.env = BTreeMap::from([("LD_PRELOAD".into(), "{weights}/libevil.so".into())]);

    let sup = Supervisor::spawn(cfg.clone()).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![s.clone()]);
    let all = until(&mut rx, 5, |all| {
        of(all, "preload").is_some_and(|r| r.state == ReplicaState::Failed)
    })
    .await;
    let reason = &of(&all, "preload").unwrap().reason;
    assert!(
        reason.contains("env LD_PRELOAD is refused")
            && reason.contains("to allowed_env in the agent config"),
        "{reason}"
    );
    assert!(!mark.exists(), "the library must not have been loaded");
    sup.stop_all().await;

    // Allowed deliberately, the very same spec loads it: the refusal above
    // is what kept the foreign code out.
    cfg.allowed_env = vec!["LD_PRELOAD".into()];
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![s]);
    until(&mut rx, 5, |all| {
        of(all, "preload").is_some_and(|r| r.pid != 0)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mark.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mark.exists(), "with allowed_env the library is preloaded");
    sup.stop_all().await;
}

#[tokio::test]
async fn no_model_roots_allow_no_weights_and_slash_allows_all() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("shadow");
    std::fs::write(&secret, "root:x:1::::::\n").unwrap();
    let mut s = spec("w", &["sleep", "1000"]);
    s.weights = secret.display().to_string();
    let mut cfg = config(dir.path());
    cfg.model_roots = Vec::new();
    let sup = Supervisor::spawn(cfg.clone()).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![s.clone()]);
    let all = until(&mut rx, 5, |all| {
        of(all, "w").is_some_and(|r| r.state == ReplicaState::Failed)
    })
    .await;
    let reason = &of(&all, "w").unwrap().reason;
    assert!(reason.contains("no model_roots are configured"), "{reason}");
    sup.stop_all().await;

    cfg.model_roots = vec!["/".into()];
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![s]);
    until(&mut rx, 5, |all| of(all, "w").is_some_and(|r| r.pid != 0)).await;
    sup.stop_all().await;
}

#[tokio::test]
async fn absolute_paths_in_arguments_are_checked_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("models");
    std::fs::create_dir_all(&roots).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let arg = format!("--config={}", outside.path().display());
    let s = spec("args", &["/bin/sh", "-c", "exec sleep 1000", "sh", &arg]);
    let mut cfg = config(dir.path());
    cfg.model_roots = vec![roots];

    let run = |cfg: SupervisorConfig, s: ReplicaSpec| async move {
        let sup = Supervisor::spawn(cfg).await.unwrap();
        let mut rx = sup.subscribe();
        sup.apply(vec![s]);
        let all = until(&mut rx, 5, |all| {
            of(all, "args").is_some_and(|r| r.pid != 0 || r.state == ReplicaState::Failed)
        })
        .await;
        sup.stop_all().await;
        of(&all, "args").unwrap().clone()
    };
    let refused = run(cfg.clone(), s.clone()).await;
    assert_eq!(refused.state, ReplicaState::Failed);
    assert!(
        refused.reason.contains(&arg) && refused.reason.contains("allowed_paths"),
        "{}",
        refused.reason
    );
    let mut allowed = cfg.clone();
    allowed.allowed_paths = vec![outside.path().to_path_buf()];
    assert_ne!(run(allowed, s.clone()).await.pid, 0);
    let mut unchecked = cfg;
    unchecked.check_args = false;
    assert_ne!(run(unchecked, s).await.pid, 0);
}

#[tokio::test]
async fn the_packaged_config_refuses_a_root_replica() {
    let text = include_str!("../../../../packaging/config/agent.toml");
    let overrides = crate::config::AgentOverrides {
        node_name: Some("gpu-1".into()),
        ..Default::default()
    };
    let packaged = crate::config::AgentConfig::from_toml(text, &overrides).unwrap();
    assert_eq!(packaged.run_as.as_deref(), Some("gpufleet-models"));
    assert!(!packaged.allow_root_replicas);
    assert_eq!(
        launch::check_root(None, true, packaged.allow_root_replicas)
            .map_err(|e| e.contains("allow_root_replicas")),
        Err(true),
        "without run_as, a root agent refuses"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SupervisorConfig::from_agent(&packaged);
    cfg.state_dir = dir.path().to_path_buf();
    cfg.port_range = port_block();
    if nix::unistd::User::from_name("gpufleet-models")
        .ok()
        .flatten()
        .is_none()
    {
        // Where the package did not create the user, the agent does not
        // start replicas as itself instead.
        assert!(matches!(
            Supervisor::spawn(cfg.clone()).await,
            Err(SupervisorError::RunAs(e)) if e.contains("gpufleet-models")
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the_packaged_config_refuses_a_root_replica (start): needs root");
        return;
    }
    // run_as emptied by hand, the rest packaged: the agent (root) refuses.
    cfg.run_as = None;
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("rooty", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |all| {
        of(all, "rooty").is_some_and(|r| r.state == ReplicaState::Failed)
    })
    .await;
    let r = of(&all, "rooty").unwrap();
    assert!(r.reason.contains("would run as root"), "{}", r.reason);
    assert!(!r.runs_as_root);
    sup.stop_all().await;
}

#[tokio::test]
async fn a_root_replica_allowed_deliberately_is_marked() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED a_root_replica_allowed_deliberately_is_marked: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let mut rx = sup.subscribe();
    sup.apply(vec![spec("rooty", &["sleep", "1000"])]);
    let all = until(&mut rx, 5, |all| {
        of(all, "rooty").is_some_and(|r| r.pid != 0)
    })
    .await;
    assert!(of(&all, "rooty").unwrap().runs_as_root);
    sup.detach().await;
    // Adopted after an agent restart, it is still marked.
    let sup = Supervisor::spawn(config(dir.path())).await.unwrap();
    let now = sup.subscribe().borrow().clone();
    assert!(of(&now, "rooty").unwrap().runs_as_root);
    sup.stop_all().await;
}

#[tokio::test]
async fn a_cpu_replica_sees_no_gpu_and_a_metrics_port_gets_a_second_free_port() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.out");
    let script = format!(
        "echo ports={{port}},{{metrics_port}} > {o}.ports; env > {o}.tmp && mv {o}.tmp {o}; exec sleep 1000",
        o = out.display()
    );
    let cfg = config(dir.path());
    let range = cfg.port_range.clone();
    let sup = Supervisor::spawn(cfg).await.unwrap();
    let mut rx = sup.subscribe();
    let mut s = spec("cpu", &["/bin/sh", "-c", &script]);
    s.gpus = Vec::new();
    s.metrics_port = crate::domain::MetricsPort::Second;
    sup.apply(vec![s]);
    let all = until(&mut rx, 5, |s| of(s, "cpu").is_some_and(|r| r.pid != 0)).await;
    let cpu = of(&all, "cpu").unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = std::fs::read_to_string(&out).unwrap();
    // Set and empty: CUDA then sees no device, rather than all of them.
    assert!(env.lines().any(|l| l == "CUDA_VISIBLE_DEVICES="), "{env}");
    assert!(
        cpu.metrics_port != 0 && cpu.metrics_port != cpu.port,
        "{cpu:?}"
    );
    assert!(range.contains(&(cpu.metrics_port as u16)), "{cpu:?}");
    let ports = std::fs::read_to_string(format!("{}.ports", out.display())).unwrap();
    assert_eq!(
        ports.trim(),
        format!("ports={},{}", cpu.port, cpu.metrics_port)
    );
    sup.stop_all().await;
    assert!(!alive(cpu.pid));
}
