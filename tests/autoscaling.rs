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
    let (_c, _a) = h.one_node_fleet(4, "");
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
    let (_c, _a) = h.one_node_fleet(1, "");
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

/// Ten-second periods on both sides: the regular report and tick alone would
/// see a load step only 10–20 s later. The news path — the agent reports as
/// soon as a scrape sees the load move or a replica change state, and the
/// coordinator decides as soon as such a report arrives — acts within
/// seconds.
#[test]
fn a_load_step_is_acted_on_at_once_not_at_the_next_tick_or_report() {
    let h = Harness::new();
    let _c =
        h.coordinator("tick = \"10s\"\nnode_suspect_after = \"30s\"\nnode_lost_after = \"60s\"");
    let _a = h.agent(
        "node-a",
        4,
        "report_interval = \"10s\"\nscrape_interval = \"200ms\"",
    );
    h.wait_ready_nodes(1);
    // Applying acts at once too: placed and ready without waiting for a tick.
    let applied = std::time::Instant::now();
    apply(
        &h,
        "quick",
        "min_replicas = 1\nmax_replicas = 4\ntarget_ongoing_requests = 2",
    );
    wait_until(Duration::from_secs(30), "one ready replica", || {
        (model(&h, "quick")?["ready_replicas"] == 1).then_some(())
    });
    assert!(
        applied.elapsed() < Duration::from_secs(8),
        "apply → ready took {:?}",
        applied.elapsed()
    );

    // About 19 requests in flight against a capacity of 2. Which rule moves
    // first (a surge of two scrapes, or a stable window that holds little
    // history yet) does not matter here; that a rule moves within seconds does.
    let step = std::time::Instant::now();
    // It ends on its own after 8 s, also when an assertion fails first.
    let mut load = load(&h, "quick", "30", "8s");
    wait_until(Duration::from_secs(20), "a scale-up decision", || {
        (model(&h, "quick")?["desired_replicas"].as_u64()? > 1).then_some(())
    });
    let decided = step.elapsed();
    wait_until(Duration::from_secs(20), "a second ready replica", || {
        (model(&h, "quick")?["ready_replicas"].as_u64()? > 1).then_some(())
    });
    let ready = step.elapsed();
    assert!(
        decided < Duration::from_secs(5) && ready < Duration::from_secs(8),
        "step → decision {decided:?}, → ready {ready:?}"
    );
    let events = h.json(&["events", "--model", "quick"]);
    let up = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "scale")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .find(|m| m.starts_with("1 → "))
        .expect("a scale-up event");
    assert!(up.contains("ongoing / target 2 per replica"), "{up}");
    let _ = load.wait();
}

/// A load generator, stopped and reaped however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(h: &Harness, model: &str, rps: &str, duration: &str) -> std::process::Child {
    load_with(h, model, rps, duration, &[])
}

fn load_with(
    h: &Harness,
    model: &str,
    rps: &str,
    duration: &str,
    extra: &[&str],
) -> std::process::Child {
    std::process::Command::new(BIN)
        .args([
            "demo",
            "load",
            "--model",
            model,
            "--coordinator-http",
            &h.http_url(),
            "--rps",
            rps,
            "--duration",
            duration,
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The cold-start rule live: a burst that the running replica drains before
/// a new one could be ready (these take 8 s to start) starts no replica,
/// although its queue is far over the panic threshold, which without the
/// rule scales up at once.
#[test]
fn a_burst_that_drains_before_a_replica_could_start_starts_none() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(4, "scrape_interval = \"250ms\"");
    // 4 slots of 16 tokens × 20 ms: 12.5 requests/s per replica.
    let command = demo_command(&[
        "--concurrency",
        "4",
        "--token-time",
        "20ms",
        "--tokens",
        "16",
        "--init-time",
        "8s",
    ]);
    h.apply(&h.model_spec(
        "bursty",
        1,
        "",
        &command,
        // Target 3 of the 4 slots: the burst's share of the 10 s stable
        // average (25 requests × ~0.3 s) stays under it even when this
        // machine runs the servers twice as slowly, so only the panic side,
        // which the cold-start rule guards, could start a replica.
        "[scaling]\nmin_replicas = 1\nmax_replicas = 4\ntarget_ongoing_requests = 3\nstable_window = \"10s\"\npanic_window = \"2s\"\nscale_down_delay = \"5s\"",
    ));
    wait_until(Duration::from_secs(40), "one ready replica", || {
        (model(&h, "bursty")?["ready_replicas"] == 1).then_some(())
    });
    // A steady 2 requests/s: the coordinator measures the service time (it
    // measured the 8 s start while the replica loaded).
    let _steady = Reaped(load(&h, "bursty", "2", "30s"));
    std::thread::sleep(Duration::from_secs(15));
    let summary = h.json(&["explain", "bursty"])["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if summary.contains("service not measured yet") || summary.contains("start not measured yet") {
        panic!("nothing measured after 15 s of steady load: {summary}");
    }
    // 25 requests a second for a second on top: about 12 queue, and drain
    // in ~2 s. Seeded: this seed's Poisson arrivals send 27 (an unseeded
    // draw can send 14, too few to reach the panic threshold).
    let mut burst = load_with(&h, "bursty", "25", "1s", &["--seed", "5"]);
    let _ = burst.wait();
    let mut most_ongoing = 0.0f64;
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let m = model(&h, "bursty").expect("the model");
        assert_eq!(
            m["desired_replicas"],
            1,
            "a replica was started for a burst that drains first: {}",
            h.json(&["explain", "bursty"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in h.json(&["explain", "bursty"])["signals"]
        .as_array()
        .unwrap()
    {
        most_ongoing = most_ongoing.max(p["ongoing"].as_f64().unwrap_or(0.0));
    }
    assert!(
        most_ongoing >= 8.0,
        "the burst reached {most_ongoing} ongoing: under the panic threshold, the rule was not tested"
    );
}

/// A coordinator and one 4-GPU agent, and a model `chat` of 4-slot demo
/// replicas (16 tokens × 20 ms: about 0.32 s a request) scaled between 1
/// and 4 at a target of 4 with the SLO `slo` (lines of `[scaling]`), once
/// one replica is ready. Keep the handles: dropping them stops the fleet.
fn chat_with_slo(h: &Harness, slo: &str) -> (Proc, Proc) {
    let c = h.coordinator("");
    let a = h.agent("node-a", 4, "scrape_interval = \"250ms\"");
    h.wait_ready_nodes(1);
    let command = demo_command(&[
        "--concurrency",
        "4",
        "--token-time",
        "20ms",
        "--tokens",
        "16",
    ]);
    h.apply(&h.model_spec(
        "chat",
        1,
        "",
        &command,
        &format!("[scaling]\nmin_replicas = 1\nmax_replicas = 4\ntarget_ongoing_requests = 4\nstable_window = \"6s\"\npanic_window = \"2s\"\n{slo}"),
    ));
    wait_until(Duration::from_secs(40), "one ready replica", || {
        (model(h, "chat")?["ready_replicas"] == 1).then_some(())
    });
    (c, a)
}

/// `explain`'s scale decisions for `name`, each as its JSON text.
fn scale_decisions(h: &Harness, name: &str) -> Vec<String> {
    let e = h.json(&["explain", name]);
    e["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "scale")
        .map(|d| d.to_string())
        .collect()
}

/// Sends `chat` 6 requests/s until the coordinator asks for a second
/// replica (`what` names it, should it not), and returns its scale
/// decisions.
fn second_replica_at_6_per_s(h: &Harness, what: &str) -> Vec<String> {
    let _steady = Reaped(load(h, "chat", "6", "60s"));
    wait_until(Duration::from_secs(45), what, || {
        (model(h, "chat")?["desired_replicas"].as_u64()? >= 2).then_some(())
    });
    scale_decisions(h, "chat")
}

/// A time-to-first-token SLO live: the coordinator keeps slots free for
/// the measured load, where the spec's own target (every slot) would hold
/// one replica, and says so in the decision's inputs.
#[test]
fn a_ttft_slo_keeps_slots_free_for_the_load() {
    let h = Harness::new();
    let _fleet = chat_with_slo(&h, "slo = \"50ms\"\nslo_kind = \"ttft\"");
    let shown = stdout(&h.cli(&["model", "show", "chat"]));
    assert!(shown.contains("slo_kind = \"ttft\""), "{shown}");
    // 6 requests/s keep about 2 in service (4 on a machine running the
    // server twice as slowly): 1 replica at the spec's target of 4, but
    // 2 + 3 × √2 = 6.2 slots (4 + 3 × 2 = 10) for a request to find one
    // free. (The slots work off a queue of under 1 per replica in 50 ms.)
    let ups = second_replica_at_6_per_s(&h, "a second replica for the TTFT SLO");
    assert!(
        ups.iter()
            .any(|d| d.contains("ttft_slots") && d.contains("for a request to find one free")),
        "{ups:?}"
    );
    assert!(
        !ups.iter()
            .any(|d| d.contains("no replica count can meet it")),
        "a TTFT SLO under the service time is not impossible: {ups:?}"
    );
}

/// An end-to-end SLO live: the slots a queue needs to settle within what
/// the SLO leaves after service, where the old rule (the slots × that wait
/// ÷ the service, at most the slots) ran one replica full.
#[test]
fn an_end_to_end_slo_keeps_the_slots_its_queue_needs() {
    let h = Harness::new();
    let _fleet = chat_with_slo(&h, "slo = \"1s\"");
    // 6 requests/s keep about 2 in service, within one replica's 4 slots;
    // the 0.7 s the SLO leaves is about two services, and for 1 request in
    // 1000 to wait longer 5 slots are needed (Erlang C; 6 to 10 on a
    // machine running the server up to twice as slowly): two replicas.
    let ups = second_replica_at_6_per_s(&h, "a second replica for the end-to-end SLO");
    assert!(
        ups.iter()
            .any(|d| d.contains("e2e_slots") && d.contains("for 1 request in 1000 to wait past")),
        "{ups:?}"
    );
}

/// A model's demand history as the stopped coordinator's store holds it,
/// and the keys of the store's demand table.
fn saved_demand(
    h: &Harness,
    name: &str,
) -> (gpufleet::coordinator::predict::DemandHistory, Vec<String>) {
    use gpufleet::coordinator::store::{RedbStore, Store};
    use redb::ReadableTable;
    let data = h.path("coordinator-data");
    let keys = {
        let db = redb::Database::open(data.join("gpufleet.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let table = tx
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("demand"))
            .unwrap();
        table
            .iter()
            .unwrap()
            .map(|row| row.unwrap().0.value().to_string())
            .collect()
    };
    let history = RedbStore::open(&data)
        .unwrap()
        .load_demand()
        .unwrap()
        .into_iter()
        .find(|(m, _)| m == name)
        .unwrap_or_else(|| panic!("no demand history of {name} saved"))
        .1;
    (history, keys)
}

/// The fine buckets' start times of a history.
fn bucket_starts(history: &gpufleet::coordinator::predict::DemandHistory) -> Vec<i64> {
    history.stored()[0].1.iter().map(|b| b.start()).collect()
}

#[test]
fn demand_history_is_saved_in_chunks_and_survives_a_coordinator_restart() {
    let h = Harness::new();
    let (mut c, _a) = h.one_node_fleet(2, "");
    apply(&h, "steady", "min_replicas = 1\nmax_replicas = 1");
    let recording = |h: &Harness| {
        wait_until(Duration::from_secs(30), "demand recorded", || {
            let ready = model(h, "steady")?["ready_replicas"] == 1;
            let e = h.try_json(&["explain", "steady"])?;
            (ready && !e["signals"].as_array()?.is_empty()).then_some(())
        });
        // A few ticks more: with one model, each tick saves its history.
        std::thread::sleep(Duration::from_secs(1));
    };
    recording(&h);
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    let (before, keys) = saved_demand(&h, "steady");
    assert!(!bucket_starts(&before).is_empty());
    assert!(
        keys.iter().any(|k| k.starts_with("steady/fine/"))
            && keys.iter().any(|k| k.starts_with("steady/coarse/"))
            && keys.iter().all(|k| k.starts_with("steady/")),
        "{keys:?}"
    );

    let mut c = h.coordinator("");
    recording(&h);
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    let (after, _) = saved_demand(&h, "steady");
    assert_ne!(after, before, "demand recorded after the restart was saved");
    let kept = bucket_starts(&after);
    assert!(
        bucket_starts(&before).iter().all(|s| kept.contains(s)),
        "the history from before the restart is kept: {:?} then {kept:?}",
        bucket_starts(&before)
    );
}
