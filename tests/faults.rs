//! The fault suite: what the fleet does when its own parts fail under it.
//! Real processes throughout: a coordinator, agents with simulated GPUs, demo
//! model servers and the demo load generator. Tests that need root (a network
//! namespace, a tmpfs mount) say "SKIPPED: why" on stderr and return when they
//! cannot have it. What each test proves: docs/faults.md.

mod common;
#[path = "faults/netns.rs"]
mod netns;
#[path = "faults/support.rs"]
mod support;
#[path = "faults/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use support::{finish_load, skip_without_root, skipped, start_load};

/// Writes the model spec `name` (its weights under the harness's model root)
/// and applies it through the coordinator at `url`.
fn apply_model(h: &Harness, url: &str, name: &str, replicas: u32, command: &str) {
    let weights = h.path(&format!("models/{name}/weights.bin"));
    std::fs::create_dir_all(weights.parent().unwrap()).unwrap();
    std::fs::write(&weights, vec![3u8; 1 << 20]).unwrap();
    let spec = h.write(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nweights = \"{}\"\nreplicas = {replicas}\n[server]\npreset = \"vllm\"\ncommand = {command}\ngpus = 1\ngpu_memory = \"10GiB\"\nready_timeout = \"30s\"\nstop_timeout = \"5s\"\n",
            weights.display()
        ),
    );
    let out = cli_at(url, &["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "model apply: {}", stderr(&out));
}

fn demo_server() -> String {
    format!("[\"{BIN}\", \"demo\", \"server\", \"--port\", \"{{port}}\", \"--weights\", \"{{weights}}\", \"--token-time\", \"5ms\"]")
}

fn replicas_at(url: &str, model: &str) -> Vec<Value> {
    json_at(url, &["replica", "ls", "--model", model])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn all_ready_at(url: &str, model: &str, n: usize) -> Option<Vec<Value>> {
    let rs = replicas_at(url, model);
    (rs.len() == n && rs.iter().all(|r| r["state"] == "ready")).then_some(rs)
}

fn node<'a>(nodes: &'a Value, name: &str) -> Option<&'a Value> {
    nodes.as_array()?.iter().find(|n| n["name"] == name)
}

/// Model-server processes of `model` in this harness (by their weights path).
fn server_pids(h: &Harness, model: &str) -> Vec<i32> {
    let weights = h.path(&format!("models/{model}/weights.bin"));
    pids_mentioning(&format!("--weights {}", weights.display()))
}

#[test]
fn ten_agent_kills_under_load_leave_the_server_alone_and_fail_no_request() {
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let url = h.coordinator_url();
    let (_c, mut agent) = h.one_node_fleet(1, "");
    apply_model(&h, &url, "steady", 1, &demo_server());
    let r = wait_until(Duration::from_secs(30), "a ready replica", || {
        all_ready_at(&url, "steady", 1)
    })
    .remove(0);
    let id = r["id"].as_str().unwrap().to_string();
    let pid = r["pid"].as_i64().unwrap();
    let mut load = start_load(&h, r["port"].as_i64().unwrap(), "25s");

    for round in 1..=10usize {
        agent.kill9();
        assert!(
            pid_alive(pid),
            "round {round}: the server died with its agent"
        );
        agent = h.agent("node-a", 1, "");
        // The agent's log file gathers every incarnation: this one has
        // adopted the server and opened its session once these counts grow.
        wait_until(
            Duration::from_secs(20),
            &format!("round {round}: the new agent adopts and reconnects"),
            || {
                let log = agent.log_text();
                (log.matches("replica adopted").count() == round
                    && log.matches("connected to the coordinator").count() > round)
                    .then_some(())
            },
        );
        let seen = wait_until(
            Duration::from_secs(10),
            &format!("round {round}: the node connected again"),
            || {
                let nodes = json_at(&url, &["node", "ls"])?;
                let n = node(&nodes, "node-a")?;
                (n["connected"] == true && n["state"] == "ready").then_some(())?;
                all_ready_at(&url, "steady", 1)
            },
        );
        assert_eq!(seen[0]["id"], id.as_str(), "round {round}: {seen:?}");
        assert_eq!(seen[0]["pid"], pid, "round {round}: {seen:?}");
        assert_eq!(
            seen[0]["restarts"], 0,
            "round {round}: re-adoption is no restart"
        );
        assert_eq!(
            server_pids(&h, "steady"),
            vec![pid as i32],
            "round {round}: exactly one server process"
        );
        // Odd rounds kill the agent as soon as it is back, even ones once it
        // has applied a fresh assignment (sent within a 200 ms tick).
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(server_pids(&h, "steady"), vec![pid as i32]);
        }
    }
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before the tenth kill: it must span them all"
    );
    assert!(
        !agent.log_text().contains("exited while the agent was away"),
        "{}",
        agent.log_text()
    );

    let report = finish_load(load, Duration::from_secs(90));
    assert!(report["sent"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["failed"], 0, "no request may fail: {report}");
    let events = json_at(&url, &["events", "--model", "steady"]).unwrap();
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "replace" || e["kind"] == "stop"),
        "{events}"
    );
}

/// Launch times (Unix ms) the crash-looping command appended to `file`.
fn launches(file: &Path) -> Vec<i64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i64>().ok())
        .map(|ns| ns / 1_000_000)
        .collect()
}

/// A model whose server exits at once, noting each launch in `file`.
fn apply_crash_looping(h: &Harness, file: &Path) {
    let command = format!(
        "[\"/bin/sh\", \"-c\", \"date +%s%N >> {}; exit 3\"]",
        file.display()
    );
    apply_model(h, &h.coordinator_url(), "looping", 1, &command);
}

/// Waits for two launches (the second comes after the 10 s base backoff) and
/// returns the replica as the coordinator shows it, waiting to restart again.
fn second_failure(h: &Harness, file: &Path) -> Value {
    let url = h.coordinator_url();
    wait_until(Duration::from_secs(25), "two launches", || {
        (launches(file).len() >= 2).then_some(())
    });
    wait_until(
        Duration::from_secs(5),
        "the second failure reported",
        || {
            let rs = replicas_at(&url, "looping");
            let r = rs.first()?;
            (rs.len() == 1 && r["restarts"] == 1 && r["pid"] == 0 && r["next_restart_unix_ms"] != 0)
                .then(|| r.clone())
        },
    )
}

#[test]
fn a_crash_looping_replica_keeps_backing_off_across_an_agent_kill() {
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let url = h.coordinator_url();
    let (_c, mut agent) = h.one_node_fleet(1, "");
    let file = h.path("launches.txt");
    apply_crash_looping(&h, &file);
    let before = second_failure(&h, &file);

    agent.kill9();
    let killed_at = launches(&file).len();
    let _agent = h.agent("node-a", 1, "");
    // Long enough for the launch the backoff had scheduled before the kill
    // (the restarted agent keeps that schedule), and then some.
    let due_in_ms = before["next_restart_unix_ms"].as_i64().unwrap() - unix_ms();
    let watch = Duration::from_millis(due_in_ms.clamp(0, 30_000) as u64 + 6_000);
    let watch_until = Instant::now() + watch.max(Duration::from_secs(12));
    let mut last = before.clone();
    while Instant::now() < watch_until {
        let rs = replicas_at(&url, "looping");
        assert!(rs.len() <= 1, "a duplicate replica: {rs:?}");
        if let Some(r) = rs.first() {
            assert_eq!(r["id"], before["id"], "the replica was replaced: {r}");
            last = r.clone();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after: Vec<i64> = launches(&file)[killed_at..].to_vec();
    // The scheduled launch happens, and backoff keeps later ones apart: at
    // most three in the window; a fork storm would show dozens.
    assert!(
        !after.is_empty() && after.len() <= 3,
        "launches after the agent's return: {after:?}"
    );
    for pair in after.windows(2) {
        assert!(
            pair[1] - pair[0] >= 7_500,
            "restarts closer than the backoff allows: {after:?}"
        );
    }
    assert!(
        last["restarts"].as_u64().unwrap() > before["restarts"].as_u64().unwrap(),
        "the restart count carries on across the agent's restart: {last}"
    );
}

#[test]
fn an_agent_restart_does_not_cut_a_crash_loop_backoff_short() {
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let (_c, mut agent) = h.one_node_fleet(1, "");
    let file = h.path("launches.txt");
    apply_crash_looping(&h, &file);
    let before = second_failure(&h, &file);
    let due = before["next_restart_unix_ms"].as_i64().unwrap();

    agent.kill9();
    let _agent = h.agent("node-a", 1, "");
    let third = wait_until(Duration::from_secs(40), "the third launch", || {
        launches(&file).get(2).copied()
    });
    assert!(
        third >= due - 500,
        "launched {} ms before its backoff ended: a restarted agent must keep the schedule",
        due - third
    );
}

#[test]
fn a_killed_coordinator_comes_back_without_stopping_or_moving_anything() {
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let url = h.coordinator_url();
    let mut c = h.coordinator("");
    let _a = h.agent("node-a", 1, "");
    let _b = h.agent("node-b", 1, "");
    h.wait_ready_nodes(2);
    apply_model(&h, &url, "kept", 2, &demo_server());
    let placed = |rs: &[Value]| {
        let mut v: Vec<(String, String, i64)> = rs
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["node"].as_str().unwrap_or_default().to_string(),
                    r["pid"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = placed(&wait_until(
        Duration::from_secs(30),
        "two ready replicas",
        || all_ready_at(&url, "kept", 2),
    ));
    let nodes: Vec<&str> = before.iter().map(|r| r.1.as_str()).collect();
    assert!(
        nodes.contains(&"node-a") && nodes.contains(&"node-b"),
        "{before:?}"
    );

    c.kill9();
    for (_, _, pid) in &before {
        assert!(pid_alive(*pid));
    }
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(20), "both agents reconnected", || {
        let nodes = json_at(&url, &["node", "ls"])?;
        let back = ["node-a", "node-b"].iter().all(|name| {
            node(&nodes, name).is_some_and(|n| n["state"] == "ready" && n["connected"] == true)
        });
        back.then_some(())
    });
    // Past the reconnect grace and many ticks: the fleet stays as it was.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let rs = replicas_at(&url, "kept");
        if !rs.is_empty() {
            assert_eq!(placed(&rs), before, "a replica changed: {rs:?}");
            assert!(rs.iter().all(|r| r["state"] == "ready"), "{rs:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut pids: Vec<i32> = before.iter().map(|r| r.2 as i32).collect();
    pids.sort();
    assert_eq!(server_pids(&h, "kept"), pids, "exactly the same servers");
    let events = json_at(&url, &["events", "--model", "kept"]).unwrap();
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "replace" || e["kind"] == "stop"),
        "{events}"
    );
}

#[test]
fn a_partitioned_node_is_replaced_keeps_serving_and_rejoins_without_surplus() {
    let test = "a_partitioned_node_is_replaced_keeps_serving_and_rejoins_without_surplus";
    if skip_without_root(test, &["ip"]) {
        return;
    }
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let net = match netns::NetNamespace::create() {
        Ok(net) => net,
        Err(why) => {
            skipped(test, &format!("cannot make a network namespace: {why}"));
            return;
        }
    };
    // The coordinator listens on the root end of the pair, which the
    // loopback agent and the CLI reach as a local address.
    let cfg = coordinator_config_on(&h, &net.root_ip);
    let _c = h.spawn(
        "coordinator",
        &["coordinator", "--config", cfg.to_str().unwrap()],
    );
    let url = format!("http://{}:{}", net.root_ip, h.grpc_port);
    let (cfg_a, _) = agent_config_for(&h, "node-a", &url, 1);
    let mut inside = spawn_program(
        &h,
        "node-a",
        "ip",
        &[
            "netns",
            "exec",
            &net.name,
            BIN,
            "agent",
            "--config",
            cfg_a.to_str().unwrap(),
        ],
    );
    let node_state = |name: &str| -> Option<String> {
        let nodes = json_at(&url, &["node", "ls"])?;
        node(&nodes, name)?["state"].as_str().map(str::to_string)
    };
    wait_until(Duration::from_secs(20), "node-a ready", || {
        (node_state("node-a")? == "ready").then_some(())
    });
    apply_model(&h, &url, "split", 1, &demo_server());
    let original = wait_until(Duration::from_secs(30), "ready on node-a", || {
        all_ready_at(&url, "split", 1)
    })
    .remove(0);
    assert_eq!(original["node"], "node-a");
    let original_pid = original["pid"].as_i64().unwrap();
    let (cfg_b, _) = agent_config_for(&h, "node-b", &url, 1);
    let _b = h.spawn("node-b", &["agent", "--config", cfg_b.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "node-b ready", || {
        (node_state("node-b")? == "ready").then_some(())
    });

    let gave_up = |p: &Proc| p.log_text().matches("keeping replicas running").count();
    let gave_up_before = gave_up(&inside);
    net.cut();
    wait_until(Duration::from_secs(15), "node-a lost", || {
        (node_state("node-a")? == "lost").then_some(())
    });
    let replacement = wait_until(
        Duration::from_secs(30),
        "a replacement ready on node-b",
        || {
            replicas_at(&url, "split")
                .into_iter()
                .find(|r| r["node"] == "node-b" && r["state"] == "ready")
        },
    );
    assert_ne!(replacement["id"], original["id"]);
    // Cut off, the agent keeps what it runs: no control plane, no kill.
    assert!(inside.exited().is_none(), "the partitioned agent died");
    assert!(
        pid_alive(original_pid),
        "the partitioned node's server was stopped"
    );
    let events = json_at(&url, &["events", "--node", "node-a"]).unwrap();
    let said = |text: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap_or_default().contains(text))
    };
    assert!(
        said("ready → suspect") && said("suspect → lost"),
        "{events}"
    );
    // Held until the agent itself gives up on its session (HTTP/2 keepalive),
    // so that healing means a new session and a new Hello, as after any
    // partition longer than a few seconds.
    wait_until(
        Duration::from_secs(40),
        "the partitioned agent to notice its session broke",
        || (gave_up(&inside) > gave_up_before).then_some(()),
    );
    assert!(
        pid_alive(original_pid),
        "the agent stopped its server when cut off"
    );

    net.heal();
    wait_until(
        Duration::from_secs(60),
        "node-a back and exactly the desired replica count",
        || {
            let nodes = json_at(&url, &["node", "ls"])?;
            let a = node(&nodes, "node-a")?;
            (a["state"] == "ready" && a["connected"] == true).then_some(())?;
            let rs = all_ready_at(&url, "split", 1)?;
            (server_pids(&h, "split").len() == 1).then_some(rs)
        },
    );
    let events = json_at(&url, &["events", "--node", "node-a"]).unwrap();
    let sessions = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "node-connected")
        .count();
    assert_eq!(sessions, 2, "node-a came back over a new session: {events}");
    let models = json_at(&url, &["model", "ls"]).unwrap();
    assert_eq!(models[0]["desired_replicas"], 1, "{models}");
    assert_eq!(models[0]["ready_replicas"], 1, "{models}");
    assert!(
        inside.exited().is_none(),
        "the agent survived the partition"
    );
}

#[test]
fn a_full_state_dir_is_reported_and_recovers_while_supervision_goes_on() {
    let test = "a_full_state_dir_is_reported_and_recovers_while_supervision_goes_on";
    if skip_without_root(test, &["mount", "umount"]) {
        return;
    }
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let url = h.coordinator_url();
    // Harness::agent keeps its config and state in `agent-NAME`.
    let state: PathBuf = h.path("agent-node-a");
    let disk = match tmpfs::SmallDisk::mount(&state, "2m") {
        Ok(disk) => disk,
        Err(why) => {
            skipped(test, &why);
            return;
        }
    };
    let (_c, mut agent) = h.one_node_fleet(2, "");
    apply_model(&h, &url, "steady", 1, &demo_server());
    let steady = wait_until(Duration::from_secs(30), "steady ready", || {
        all_ready_at(&url, "steady", 1)
    })
    .remove(0);

    let filler = disk.fill("filler");
    apply_model(&h, &url, "late", 1, &demo_server());
    let late = wait_until(
        Duration::from_secs(30),
        "the unsaved record in the replica's reason",
        || {
            let r = replicas_at(&url, "late").into_iter().next()?;
            let reason = r["reason"].as_str()?;
            (reason.contains("not persisted") && reason.contains("No space left")).then_some(r)
        },
    );
    assert!(agent.exited().is_none(), "the agent died of a full disk");
    let health = wait_until(Duration::from_secs(15), "/healthz degraded", || {
        let (code, body) = http("GET", agent.http_port, "/healthz", "");
        (code == 503).then_some(body)
    });
    assert!(
        health.contains("degraded: state dir") && health.contains("is full"),
        "{health}"
    );
    let (_, metrics) = http("GET", agent.http_port, "/metrics", "");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gpufleet_agent_state_dir_degraded") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        agent.log_text().contains("cannot persist replica record"),
        "{}",
        agent.log_text()
    );
    let still = all_ready_at(&url, "steady", 1).expect("steady stays ready");
    assert_eq!(still[0]["pid"], steady["pid"]);
    assert!(pid_alive(steady["pid"].as_i64().unwrap()));

    std::fs::remove_file(&filler).unwrap();
    let record = state.join(format!(
        "replicas/{}/record.json",
        late["id"].as_str().unwrap()
    ));
    let recovered = wait_until(
        Duration::from_secs(30),
        "the record saved and the replica ready",
        || {
            let rs = all_ready_at(&url, "late", 1)?;
            let reason = rs[0]["reason"].as_str()?;
            let saved: Value = serde_json::from_slice(&std::fs::read(&record).ok()?).ok()?;
            (!reason.contains("not persisted") && saved["pid"] == rs[0]["pid"])
                .then(|| rs[0].clone())
        },
    );
    assert_eq!(
        recovered["id"], late["id"],
        "the same replica, not a new one"
    );
    wait_until(Duration::from_secs(15), "/healthz ok again", || {
        (http("GET", agent.http_port, "/healthz", "").0 == 200).then_some(())
    });
    assert!(agent.exited().is_none());

    // The saved record is one a restarted agent can use: both servers are
    // adopted, not started again.
    agent.kill9();
    let agent = h.agent("node-a", 2, "");
    wait_until(Duration::from_secs(20), "both replicas adopted", || {
        (agent.log_text().matches("replica adopted").count() == 2).then_some(())
    });
    for (model, before) in [("steady", &steady), ("late", &recovered)] {
        let now = wait_until(Duration::from_secs(10), "the adopted replica", || {
            all_ready_at(&url, model, 1)
        });
        assert_eq!(now[0]["pid"], before["pid"], "{model}: {now:?}");
        assert_eq!(now[0]["restarts"], 0, "{model}: {now:?}");
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
