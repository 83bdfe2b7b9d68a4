//! GPU health end to end: a simulated GPU falls off the bus under a running
//! replica; the fleet sees it unhealthy with its reason, the other GPUs keep
//! reporting, and the replica is replaced on a healthy GPU.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_gpu_that_falls_off_the_bus_is_reported_and_its_replica_moves() {
    let h = Harness::new();
    let (_c, a) = h.one_node_fleet(2, "");
    h.apply(&h.model_spec("m", 1, "replicas = 1", &demo_command(&[]), ""));
    let first = wait_until(Duration::from_secs(30), "a ready replica", || {
        let rs = h.try_json(&["replica", "ls"])?;
        let r = rs.as_array()?.first()?.clone();
        (r["state"] == "ready").then_some(r)
    });
    let bad_gpu = first["gpus"][0].as_u64().unwrap();
    let good_gpu = 1 - bad_gpu;

    let (status, body) = http(
        "POST",
        a.http_port,
        &format!("/v1/simulated/gpus/{bad_gpu}/fault"),
        r#"{"kind":"lost"}"#,
    );
    assert_eq!(status, 200, "{body}");

    let gpus = wait_until(
        Duration::from_secs(15),
        "the GPU unhealthy in gpu ls",
        || {
            let g = h.try_json(&["gpu", "ls"])?;
            let bad = g
                .as_array()?
                .iter()
                .find(|g| g["index"] == bad_gpu)?
                .clone();
            (bad["healthy"] == false).then_some(g)
        },
    );
    let bad = gpus
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["index"] == bad_gpu)
        .unwrap();
    assert!(
        bad["health_reason"]
            .as_str()
            .unwrap()
            .contains("fallen off the bus"),
        "{bad}"
    );
    let good = gpus
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["index"] == good_gpu)
        .unwrap();
    assert_eq!(good["healthy"], true);

    // The replica moves to the healthy GPU, and the node keeps reporting.
    let seen_before = h.json(&["node", "ls"])[0]["last_seen_unix_ms"]
        .as_i64()
        .unwrap();
    let moved = wait_until(
        Duration::from_secs(30),
        "the replica on the healthy GPU",
        || {
            let rs = h.try_json(&["replica", "ls"])?;
            let rs = rs.as_array()?.clone();
            (rs.len() == 1 && rs[0]["state"] == "ready" && rs[0]["gpus"][0] == good_gpu)
                .then_some(rs[0].clone())
        },
    );
    assert_ne!(moved["id"], first["id"]);
    // The move can now be over before the agent's next report: wait for it.
    wait_until(Duration::from_secs(5), "the node's next report", || {
        let seen = h.try_json(&["node", "ls"])?[0]["last_seen_unix_ms"].as_i64()?;
        (seen > seen_before).then_some(())
    });
    let events = h.json(&["events", "--model", "m"]);
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "replace"
        && e["message"].as_str().unwrap().contains("unhealthy")), "{events}");

    // Bad fault requests are refused with a reason.
    let (status, body) = http(
        "POST",
        a.http_port,
        "/v1/simulated/gpus/9/fault",
        r#"{"kind":"lost"}"#,
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn an_xid_makes_a_gpu_unhealthy_until_the_operator_marks_it_healthy() {
    let h = Harness::new();
    let (_c, a) = h.one_node_fleet(2, "");
    let (status, body) = http(
        "POST",
        a.http_port,
        "/v1/simulated/gpus/1/fault",
        r#"{"kind":"xid","xid":48}"#,
    );
    assert_eq!(status, 200, "{body}");
    let gpu = |h: &Harness| -> Option<serde_json::Value> {
        h.try_json(&["gpu", "ls"])?
            .as_array()?
            .iter()
            .find(|g| g["index"] == 1)
            .cloned()
    };
    let bad = wait_until(Duration::from_secs(15), "GPU 1 unhealthy", || {
        gpu(&h).filter(|g| g["healthy"] == false)
    });
    assert!(
        bad["health_reason"].as_str().unwrap().contains("48"),
        "{bad}"
    );
    // Sticky: an Xid does not heal by itself.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gpu(&h).unwrap()["healthy"], false);

    let out = h.cli(&["gpu", "mark-healthy", "--node", "node-a", "--gpu", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(15), "GPU 1 healthy again", || {
        gpu(&h).filter(|g| g["healthy"] == true)
    });
    let no_gpu = h.cli(&["gpu", "mark-healthy", "--node", "node-a", "--gpu", "7"]);
    assert!(!no_gpu.status.success());
    assert!(
        stderr(&no_gpu).contains("has no GPU 7"),
        "{}",
        stderr(&no_gpu)
    );
}
