//! Autoscaling end to end: real demo servers under real load scale up within
//! seconds, come back down after the scale-down delay, go to zero when idle,
//! and wake on demand through the coordinator's HTTP endpoint.

mod common;

use std::time::Duration;

use common::*;

fn apply(h: &Harness, name: &str, scaling: &str) {
    let command = demo_command(&["--concurrency", "4", "--token-time", "20ms"]);
    h.apply(&h.model_spec(name, 1, "", &command, &format!("[scaling]\n{scaling}")));
}

fn model(h: &Harness, name: &str) -> Option<serde_json::Value> {
    h.try_json(&["model", "ls"])?
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

#[test]
fn load_scales_a_model_up_within_seconds_and_back_down_after_the_delay() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _a = h.agent("node-a", 4, "");
    h.wait_ready_nodes(1);
    apply(
        &h,
        "elastic",
        "min_replicas = 1\nmax_replicas = 3\ntarget_ongoing_requests = 2\nstable_window = \"6s\"\npanic_window = \"2s\"\nscale_down_delay = \"3s\"\nmax_scale_down_step = 3",
    );
    wait_until(Duration::from_secs(30), "one ready replica", || {
        (model(&h, "elastic")?["ready_replicas"] == 1).then_some(())
    });

    // 30 requests/s of 0.64 s each keep about 19 requests in flight: far over
    // 2 per replica, so the model goes to its maximum.
    let load = std::process::Command::new(BIN)
        .args([
            "demo",
            "load",
            "--model",
            "elastic",
            "--coordinator-http",
            &h.http_url(),
            "--rps",
            "30",
            "--duration",
            "15s",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(12), "scale-up to 3 desired", || {
        (model(&h, "elastic")?["desired_replicas"] == 3).then_some(())
    });
    wait_until(Duration::from_secs(30), "three ready replicas", || {
        (model(&h, "elastic")?["ready_replicas"] == 3).then_some(())
    });
    let report = load.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(report["completed"].as_u64().unwrap() > 100, "{report}");

    // Quiet again: after the scale-down delay the model returns to its minimum.
    wait_until(Duration::from_secs(40), "scale-down to 1", || {
        let m = model(&h, "elastic")?;
        (m["desired_replicas"] == 1 && m["current_replicas"] == 1).then_some(())
    });

    let e = h.json(&["explain", "elastic"]);
    let decisions = e["decisions"].as_array().unwrap();
    let ups: Vec<&str> = decisions
        .iter()
        .filter(|d| d["kind"] == "scale")
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert!(
        ups.iter()
            .any(|m| m.contains("→ 3") && m.contains("ongoing")),
        "{ups:?}"
    );
    assert!(ups.iter().any(|m| m.contains("→ 1")), "{ups:?}");
    assert!(!e["signals"].as_array().unwrap().is_empty());
    assert!(
        e["summary"].as_str().unwrap().contains("policy: 1..3"),
        "{}",
        e["summary"]
    );
    // The table form, for people.
    let text = stdout(&h.cli(&["explain", "elastic"]));
    assert!(text.contains("Decisions:"), "{text}");
}

#[test]
fn an_idle_model_scales_to_zero_and_wakes_on_demand() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _a = h.agent("node-a", 1, "");
    h.wait_ready_nodes(1);
    apply(
        &h,
        "sleepy",
        "min_replicas = 0\nmax_replicas = 2\ntarget_ongoing_requests = 4\nstable_window = \"4s\"\npanic_window = \"2s\"\nscale_down_delay = \"2s\"\nscale_to_zero_after = \"3s\"",
    );
    // A new model starts at zero with min 0; wake it through the gateway hook.
    let (status, body) = http("POST", h.http_port, "/v1/models/sleepy/wake", "");
    assert_eq!(status, 202, "{body}");
    wait_until(
        Duration::from_secs(30),
        "woken to one ready replica",
        || (model(&h, "sleepy")?["ready_replicas"] == 1).then_some(()),
    );
    // No requests: back to zero after scale_to_zero_after.
    wait_until(Duration::from_secs(30), "scaled to zero", || {
        let m = model(&h, "sleepy")?;
        (m["desired_replicas"] == 0 && m["current_replicas"] == 0).then_some(())
    });
    // And the CLI wakes it too.
    let out = h.cli(&["model", "wake", "sleepy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(30), "woken again", || {
        (model(&h, "sleepy")?["ready_replicas"] == 1).then_some(())
    });
    let (status, _) = http("POST", h.http_port, "/v1/models/nope/wake", "");
    assert_eq!(status, 404);
}
