//! The warm cache and replica logs through the CLI: `warm start --wait`,
//! `warm ls`, `warm evict`, and `replica logs` fetched from the node.

mod common;

use std::time::Duration;

use common::*;

fn warm_entry(h: &Harness, model: &str) -> Option<serde_json::Value> {
    h.try_json(&["warm", "ls"])?
        .as_array()?
        .iter()
        .find(|w| w["model"] == model)
        .cloned()
}

#[test]
fn warm_start_waits_until_resident_and_evict_drops_it() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    h.apply(&h.model_spec("cached", 32, "replicas = 0", &demo_command(&[]), ""));

    let out = h.cli(&[
        "warm",
        "start",
        "cached",
        "--node",
        "node-a",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cached is resident on node-a"),
        "{}",
        stderr(&out)
    );
    let w = warm_entry(&h, "cached").expect("a warm entry");
    assert_eq!(w["state"], "resident");
    // The end of the fill is an event, which is what ended the wait.
    let events = h.json(&["events", "--model", "cached"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "warm-done" && e["node"] == "node-a"),
        "{events}"
    );
    assert_eq!(w["resident_bytes"], w["total_bytes"]);
    assert_eq!(w["total_bytes"], 32u64 << 20);
    assert_eq!(w["reason"], "manual");
    for key in ["node", "model", "resident_bytes", "total_bytes", "state"] {
        assert!(w.get(key).is_some(), "warm ls lacks {key}");
    }

    let out = h.cli(&["warm", "evict", "cached", "--node", "node-a"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The entry leaves the cache: it reads less than full, then drops out.
    wait_until(
        Duration::from_secs(30),
        "the weights evicted",
        || match warm_entry(&h, "cached") {
            None => Some(()),
            Some(w) => {
                (w["resident_bytes"].as_u64()? < w["total_bytes"].as_u64()? / 2).then_some(())
            }
        },
    );

    let bad = h.cli(&["warm", "start", "nope", "--node", "node-a"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("model `nope` not found"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn replica_logs_come_from_the_node() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    h.apply(&h.model_spec("talky", 1, "replicas = 1", &demo_command(&[]), ""));
    let id = wait_until(Duration::from_secs(30), "a ready replica", || {
        let rs = h.try_json(&["replica", "ls"])?;
        let r = rs.as_array()?.first()?.clone();
        (r["state"] == "ready").then(|| r["id"].as_str().unwrap().to_string())
    });
    let out = h.cli(&["replica", "logs", &id, "-n", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.trim().is_empty(), "the server's log has lines");
    assert!(text.to_lowercase().contains("weights"), "{text}");

    let missing = h.cli(&["replica", "logs", "no-such-replica"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("replica `no-such-replica` not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn replica_logs_follow_prints_each_new_line_once() {
    use std::io::{BufRead, BufReader};
    let h = Harness::new();
    // The script is handed the gpufleet binary's path as an argument.
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let (_c, _a) = h.one_node_fleet(1, &format!("allowed_paths = [\"{bin_dir}\"]\n"));
    // A server that also writes a numbered line every 100 ms.
    let command = format!(
        "[\"/bin/sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done & exec \\\"$0\\\" demo server --port \\\"$1\\\" --weights \\\"$2\\\"\", \"{BIN}\", \"{{port}}\", \"{{weights}}\"]"
    );
    h.apply(&h.model_spec("ticking", 1, "replicas = 1", &command, ""));
    let id = wait_until(Duration::from_secs(30), "a ready replica", || {
        let rs = h.try_json(&["replica", "ls"])?;
        let r = rs.as_array()?.first()?.clone();
        (r["state"] == "ready").then(|| r["id"].as_str().unwrap().to_string())
    });
    let mut follow = std::process::Command::new(BIN)
        .args(["replica", "logs", &id, "-n", "1", "-f"])
        .env("GPUFLEET_COORDINATOR", h.coordinator_url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let ticks: Vec<u64> = lines
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.parse().ok()))
        .take(25)
        .collect();
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(ticks.len(), 25, "{ticks:?}");
    // Several polls' worth, each line once and in order.
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "lines lost or repeated: {ticks:?}"
    );
}

#[test]
fn standby_warming_keeps_a_spare_node_warm_and_scale_up_lands_there() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _a = h.agent("node-a", 1, "");
    let _b = h.agent("node-b", 2, "");
    let _c3 = h.agent("node-c", 1, "");
    h.wait_ready_nodes(3);
    h.apply(&h.model_spec(
        "spare",
        8,
        "",
        &demo_command(&[]),
        "[scaling]\nmin_replicas = 1\nmax_replicas = 2\n[warm]\nmode = \"standby\"\nstandby_nodes = 1",
    ));
    let first = wait_until(Duration::from_secs(30), "a ready replica", || {
        let rs = h.try_json(&["replica", "ls"])?;
        let r = rs.as_array()?.first()?.clone();
        (r["state"] == "ready").then_some(r)
    });
    // Packing puts the first replica on a one-GPU node; the standby is where
    // placement would put the next replica: the other one-GPU node.
    assert_ne!(first["node"], "node-b");
    let other = if first["node"] == "node-a" {
        "node-c"
    } else {
        "node-a"
    };
    let standby = wait_until(Duration::from_secs(30), "a resident standby entry", || {
        let w = h.try_json(&["warm", "ls"])?;
        w.as_array()?
            .iter()
            .find(|e| e["reason"] == "standby" && e["state"] == "resident")
            .cloned()
    });
    assert_eq!(standby["node"], other, "{standby}");

    // The next replica lands on the warm standby node.
    assert!(h
        .cli(&["model", "scale", "spare", "--replicas", "2"])
        .status
        .success());
    wait_until(
        Duration::from_secs(30),
        "the second replica on the standby node",
        || {
            let rs = h.try_json(&["replica", "ls"])?;
            rs.as_array()?
                .iter()
                .any(|r| r["node"] == other)
                .then_some(())
        },
    );
}

#[test]
fn evicting_the_weights_of_a_running_replica_says_they_stay() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    h.apply(&h.model_spec("serving", 8, "replicas = 1", &demo_command(&[]), ""));
    wait_until(
        Duration::from_secs(60),
        "its weights warm for the replica",
        || {
            let w = warm_entry(&h, "serving")?;
            let ready = h
                .replicas_of("serving")
                .iter()
                .any(|r| r["state"] == "ready");
            (ready && w["reason"] == "replica" && w["state"] == "resident").then_some(())
        },
    );

    let out = h.cli(&["warm", "evict", "serving", "--node", "node-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("a replica of serving runs on node-a: its weights stay"),
        "{said}"
    );
    assert!(!said.contains("evicting"), "{said}");
    // And they do stay.
    std::thread::sleep(Duration::from_secs(2));
    let w = warm_entry(&h, "serving").expect("still warm");
    assert_eq!(w["resident_bytes"], w["total_bytes"], "{w}");
}
