//! The spine end to end: a real coordinator and real agents (simulated GPUs)
//! on loopback, driven through the real CLI.

mod common;

use std::time::Duration;

use common::*;

const SPEC: &str = r#"
name = "llama-test"
weights = "/srv/models/llama-test"
replicas = 0

[server]
preset = "vllm"
command = ["/bin/sleep", "1000"]
gpus = 1
gpu_memory = "20GiB"
"#;

#[test]
fn two_agents_show_up_with_their_gpus() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _a = h.agent("node-a", 4, "");
    let _b = h.agent("node-b", 2, "");
    let nodes = wait_until(Duration::from_secs(20), "both nodes ready", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "ready").len() == 2).then_some(nodes)
    });
    let a = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-a")
        .unwrap();
    let gpus = a["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 4);
    for key in [
        "index",
        "uuid",
        "name",
        "memory_total_bytes",
        "memory_used_bytes",
        "utilization_pct",
        "healthy",
    ] {
        assert!(
            gpus[0].get(key).is_some(),
            "node ls gpu lacks {key}: {}",
            gpus[0]
        );
    }
    assert_eq!(gpus[0]["memory_total_bytes"], 80u64 << 30);
    assert!(a["last_seen"].as_str().unwrap().ends_with('Z'));

    let all = h.json(&["gpu", "ls"]);
    assert_eq!(all.as_array().unwrap().len(), 6);
    let one = h.json(&["gpu", "ls", "--node", "node-b"]);
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 2);
    for key in [
        "node",
        "index",
        "uuid",
        "name",
        "memory_total_bytes",
        "memory_used_bytes",
        "utilization_pct",
        "temperature_c",
        "power_w",
        "healthy",
        "replica",
    ] {
        assert!(one[0].get(key).is_some(), "gpu ls lacks {key}: {}", one[0]);
    }
    assert_ne!(one[0]["uuid"], one[1]["uuid"]);

    // The table form is for people: headers and one row per node.
    let table = stdout(&h.cli(&["node", "ls"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn a_model_survives_a_coordinator_restart_and_agents_reconnect() {
    let h = Harness::new();
    let mut c = h.coordinator("");
    let _a = h.agent("node-a", 2, "");
    let _b = h.agent("node-b", 2, "");
    wait_until(Duration::from_secs(20), "both nodes ready", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "ready").len() == 2).then_some(())
    });
    let spec = h.write("llama.toml", SPEC);
    let out = h.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(
        c.stop(Duration::from_secs(10)),
        Some(0),
        "coordinator exits 0 on SIGTERM"
    );
    let down = h.cli(&["model", "ls"]);
    assert!(!down.status.success());
    assert!(
        stderr(&down).contains(&h.coordinator_url()),
        "an unreachable coordinator is named: {}",
        stderr(&down)
    );

    let _c2 = h.coordinator("");
    // Agents reconnect by themselves within a few seconds.
    wait_until(Duration::from_secs(15), "agents to reconnect", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "ready").len() == 2
            && nodes.as_array()?.iter().all(|n| n["connected"] == true))
        .then_some(())
    });
    let models = h.json(&["model", "ls"]);
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m["name"], "llama-test");
    for key in [
        "min_replicas",
        "max_replicas",
        "desired_replicas",
        "ready_replicas",
    ] {
        assert!(m.get(key).is_some(), "model ls lacks {key}: {m}");
    }
    let shown = h.json(&["model", "show", "llama-test"]);
    assert_eq!(shown["spec"]["server"]["gpus"], 1);

    let rm = h.cli(&["model", "rm", "llama-test"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert_eq!(h.json(&["model", "ls"]).as_array().unwrap().len(), 0);
    let gone = h.cli(&["model", "show", "llama-test"]);
    assert!(!gone.status.success());
    assert!(
        stderr(&gone).contains("model `llama-test` not found"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn bad_specs_are_refused_with_one_clear_line_and_nothing_is_stored() {
    let h = Harness::new();
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(10), "coordinator up", || {
        h.try_json(&["model", "ls"])
    });
    let cases = [
        (
            "typo",
            SPEC.replace("replicas = 0", "replicass = 0"),
            "unknown key `replicass`",
        ),
        (
            "negative",
            SPEC.replace("replicas = 0", "replicas = -3"),
            "replicas",
        ),
        (
            "absurd",
            SPEC.replace("replicas = 0", "replicas = 1000000"),
            "out of range",
        ),
        (
            "duration",
            format!("{SPEC}ready_timeout = \"soon\"\n"),
            "ready_timeout",
        ),
        (
            "size",
            SPEC.replace("\"20GiB\"", "\"20 gigs\""),
            "gpu_memory",
        ),
        ("name", SPEC.replace("llama-test", "llama test"), "name"),
    ];
    for (label, text, needle) in cases {
        let f = h.write(&format!("{label}.toml"), &text);
        let out = h.cli(&["model", "apply", "-f", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{label} was accepted");
        let err = stderr(&out);
        assert!(err.contains(needle), "{label}: `{err}` lacks `{needle}`");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{label}: one line, got: {err}"
        );
    }
    assert_eq!(h.json(&["model", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn a_second_agent_with_the_same_node_name_is_refused() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _first = h.agent_as("first", "twin", 2, "");
    wait_until(Duration::from_secs(15), "first agent ready", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "ready") == ["twin"]).then_some(())
    });
    let second = h.agent_as("second", "twin", 3, "");
    wait_until(
        Duration::from_secs(15),
        "the refusal in the second agent's log",
        || {
            second
                .log_text()
                .contains("already connected")
                .then_some(())
        },
    );
    // The first keeps its session: the node still has the first agent's 2 GPUs.
    std::thread::sleep(Duration::from_secs(1));
    let nodes = h.json(&["node", "ls"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["state"], "ready");
    assert_eq!(nodes[0]["gpus"].as_array().unwrap().len(), 2);
    let events = h.json(&["events"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "node-refused" && e["node"] == "twin"));
}

#[test]
fn a_silent_node_turns_suspect_then_lost() {
    let h = Harness::new();
    let (_c, mut a) = h.one_node_fleet(1, "");
    a.kill9();
    wait_until(Duration::from_secs(10), "node suspect", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "suspect") == ["node-a"]).then_some(())
    });
    wait_until(Duration::from_secs(10), "node lost", || {
        let nodes = h.try_json(&["node", "ls"])?;
        (nodes_in_state(&nodes, "lost") == ["node-a"]).then_some(())
    });
}

#[test]
fn the_cli_names_the_address_it_could_not_reach() {
    let port = free_port();
    let out = std::process::Command::new(BIN)
        .args([
            "node",
            "ls",
            "--coordinator",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bad_daemon_config_exits_64_naming_the_key() {
    let h = Harness::new();
    let cfg = h.write("bad.toml", "listen = \"127.0.0.1:1\"\ntick = \"never\"\n");
    let out = std::process::Command::new(BIN)
        .args(["coordinator", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("tick"), "{}", stderr(&out));

    let out = std::process::Command::new(BIN)
        .args(["agent", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("/nonexistent/agent.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(BIN)
        .args(["model", "scale", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_nvml_agent_without_a_driver_names_the_library_it_tried() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: this machine has an NVIDIA driver");
        return;
    }
    let h = Harness::new();
    let out = std::process::Command::new(BIN)
        .args([
            "agent",
            "--node-name",
            "n",
            "--state-dir",
            h.path("state").to_str().unwrap(),
            "--gpu-backend",
            "nvml",
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("libnvidia-ml.so.1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn events_follow_streams_new_events_as_json_lines() {
    let h = Harness::new();
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(10), "coordinator up", || {
        h.try_json(&["model", "ls"])
    });
    let mut follow = std::process::Command::new(BIN)
        .args([
            "events",
            "--follow",
            "-o",
            "json",
            "--coordinator",
            &h.coordinator_url(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _a = h.agent("late", 1, "");
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = false;
    while std::time::Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            if e["kind"] == "node-connected" && e["node"] == "late" {
                seen = true;
                // The event typed, beside its text.
                assert_eq!(e["detail"]["type"], "node-connected", "{e}");
                assert_eq!(e["detail"]["node"], "late", "{e}");
                assert_eq!(e["detail"]["gpus"], 1, "{e}");
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "the follower saw the node connect");
}
