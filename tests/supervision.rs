//! Replicas through the whole stack: the coordinator assigns, the agent runs
//! real demo model servers, restarts them, and re-adopts them after its own
//! death.

mod common;

use std::time::Duration;

use common::*;

fn spec(h: &Harness, name: &str, replicas: u32, command: &str) -> std::path::PathBuf {
    h.model_spec(name, 4, &format!("replicas = {replicas}"), command, "")
}

fn demo_server_command() -> String {
    demo_command(&["--token-time", "5ms"])
}

fn replicas(h: &Harness, model: &str) -> Vec<serde_json::Value> {
    h.try_json(&["replica", "ls", "--model", model])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn ready_replicas(h: &Harness, model: &str, n: usize) -> Option<Vec<serde_json::Value>> {
    let rs = replicas(h, model);
    (rs.len() == n && rs.iter().all(|r| r["state"] == "ready")).then_some(rs)
}

fn alive(pid: i64) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Demo servers of this harness, by their command line.
fn server_pids(h: &Harness, model: &str) -> Vec<i64> {
    let needle = h
        .path(&format!("models/{model}/weights.bin"))
        .display()
        .to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" demo server ") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn replicas_start_on_their_gpus_become_ready_serve_and_stop() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "");
    let f = spec(&h, "served", 2, &demo_server_command());
    let out = h.cli(&["model", "apply", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let rs = wait_until(Duration::from_secs(30), "two ready replicas", || {
        ready_replicas(&h, "served", 2)
    });
    let mut gpus: Vec<i64> = rs.iter().map(|r| r["gpus"][0].as_i64().unwrap()).collect();
    gpus.sort();
    assert_eq!(gpus, vec![0, 1], "one replica per GPU: {rs:?}");
    for r in &rs {
        assert!(r["pid"].as_i64().unwrap() > 0);
        assert!(alive(r["pid"].as_i64().unwrap()));
        let env = std::fs::read(format!("/proc/{}/environ", r["pid"])).unwrap();
        let env = String::from_utf8_lossy(&env);
        // GPUs are named by UUID, as CUDA (and MIG instances) need.
        let all = h.json(&["gpu", "ls"]);
        let gpu = all
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["index"] == r["gpus"][0])
            .unwrap();
        let uuid = gpu["uuid"].as_str().unwrap();
        assert!(
            env.contains(&format!("CUDA_VISIBLE_DEVICES={uuid}")),
            "{env}"
        );
    }

    // The replicas serve real requests, and their own metrics reach the fleet.
    let port = rs[0]["port"].as_i64().unwrap();
    let load = h.cli(&[
        "demo",
        "load",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--rps",
        "20",
        "--duration",
        "1s",
        "-o",
        "json",
    ]);
    assert!(load.status.success(), "{}", stderr(&load));
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    wait_until(Duration::from_secs(10), "fresh serving signals", || {
        let rs = replicas(&h, "served");
        rs.iter()
            .all(|r| r["signals"]["fresh"] == true)
            .then_some(())
    });
    // GPU memory follows the replicas on the simulated GPUs.
    let g = h.json(&["gpu", "ls", "--node", "node-a"]);
    for gpu in g.as_array().unwrap() {
        assert!(
            gpu["memory_used_bytes"].as_u64().unwrap() >= 10 << 30,
            "{gpu}"
        );
        assert!(!gpu["replica"].as_str().unwrap().is_empty(), "{gpu}");
    }

    let pids: Vec<i64> = rs.iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    let out = h.cli(&["model", "scale", "served", "--replicas", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(20), "replicas gone", || {
        replicas(&h, "served").is_empty().then_some(())
    });
    wait_until(Duration::from_secs(5), "server processes gone", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn a_killed_server_is_restarted_and_a_killed_agent_re_adopts_without_duplicates() {
    let h = Harness::new();
    let (_c, mut agent) = h.one_node_fleet(1, "");
    let f = spec(&h, "sturdy", 1, &demo_server_command());
    assert!(h
        .cli(&["model", "apply", "-f", f.to_str().unwrap()])
        .status
        .success());
    let r = wait_until(Duration::from_secs(30), "ready replica", || {
        ready_replicas(&h, "sturdy", 1)
    })
    .remove(0);
    let (id, pid) = (
        r["id"].as_str().unwrap().to_string(),
        r["pid"].as_i64().unwrap(),
    );
    let restarts = r["restarts"].clone();

    // The agent dies hard, twice; the server keeps serving and keeps its pid.
    for _ in 0..2 {
        agent.kill9();
        assert!(alive(pid), "the model server must outlive the agent");
        agent = h.agent("node-a", 1, "");
        let again = wait_until(Duration::from_secs(20), "re-adopted replica", || {
            let rs = ready_replicas(&h, "sturdy", 1)?;
            (rs[0]["id"] == id.as_str() && rs[0]["pid"] == pid).then_some(rs)
        });
        assert_eq!(
            again[0]["restarts"], restarts,
            "re-adoption is not a restart"
        );
        assert_eq!(
            server_pids(&h, "sturdy"),
            vec![pid],
            "exactly one server process"
        );
    }

    // The server dies: the agent restarts it (after its backoff) with a new pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let restarted = wait_until(Duration::from_secs(40), "restarted replica", || {
        let rs = ready_replicas(&h, "sturdy", 1)?;
        (rs[0]["pid"] != pid).then_some(rs)
    });
    assert_eq!(restarted[0]["id"], id.as_str());
    assert!(restarted[0]["restarts"].as_u64().unwrap() > restarts.as_u64().unwrap());
    assert_eq!(server_pids(&h, "sturdy").len(), 1);
}

#[test]
fn a_command_that_cannot_run_fails_with_its_reason_and_spares_the_rest() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "");
    let good = spec(&h, "good", 1, &demo_server_command());
    let bad = spec(
        &h,
        "broken",
        1,
        "[\"/nonexistent/vllm\", \"serve\", \"--port\", \"{port}\"]",
    );
    assert!(h
        .cli(&["model", "apply", "-f", good.to_str().unwrap()])
        .status
        .success());
    assert!(h
        .cli(&["model", "apply", "-f", bad.to_str().unwrap()])
        .status
        .success());
    let failed = wait_until(
        Duration::from_secs(20),
        "failed replica with reason",
        || {
            let rs = replicas(&h, "broken");
            let r = rs.first()?.clone();
            (r["state"] == "failed" && r["reason"].as_str()?.contains("/nonexistent/vllm"))
                .then_some(r)
        },
    );
    assert!(!failed["reason"].as_str().unwrap().is_empty());
    wait_until(Duration::from_secs(30), "the good model ready", || {
        ready_replicas(&h, "good", 1)
    });
}

#[test]
fn a_command_outside_allowed_executables_fails_with_that_reason() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "allowed_executables = [\"/usr/bin/true\"]\n");
    h.apply(&spec(&h, "forbidden", 1, &demo_server_command()));
    let r = wait_until(Duration::from_secs(20), "a failed replica", || {
        let rs = replicas(&h, "forbidden");
        let r = rs.first()?.clone();
        (r["state"] == "failed").then_some(r)
    });
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("allowed_executables"), "{reason}");
    assert!(
        server_pids(&h, "forbidden").is_empty(),
        "nothing was started"
    );
}

#[test]
fn an_agent_as_root_refuses_a_root_replica_unless_allowed() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED an_agent_as_root_refuses_a_root_replica_unless_allowed: needs root");
        return;
    }
    let h = Harness::new();
    let _c = h.coordinator("");
    // No run_as, root agent, allow_root_replicas as the package ships it.
    let _a = h.agent("node-a", 1, "allow_root_replicas = false\n");
    h.wait_ready_nodes(1);
    h.apply(&spec(&h, "rooty", 1, &demo_server_command()));
    let r = wait_until(Duration::from_secs(20), "a failed replica", || {
        let rs = replicas(&h, "rooty");
        let r = rs.first()?.clone();
        (r["state"] == "failed").then_some(r)
    });
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("would run as root") && reason.contains("allow_root_replicas = true"),
        "{reason}"
    );
    assert!(server_pids(&h, "rooty").is_empty(), "nothing was started");
    assert_eq!(r["runs_as_root"], false);
}

#[test]
fn a_spec_whose_env_loads_code_is_refused_at_apply() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    let spec = h.model_spec(
        "preload",
        1,
        "replicas = 1",
        &demo_command(&[]),
        "[server.env]\nLD_PRELOAD = \"{weights}/libevil.so\"\n",
    );
    let out = h.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("env LD_PRELOAD is refused")
            && err.contains("allowed_env in the coordinator config"),
        "{err}"
    );
    assert_eq!(h.json(&["model", "ls"]).as_array().unwrap().len(), 0);
}
