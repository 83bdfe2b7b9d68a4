//! Fleet operations end to end: cordon, drain, and a node that is lost and
//! comes back.

mod common;

use std::time::Duration;

use common::*;

fn replicas(h: &Harness, model: &str) -> Vec<serde_json::Value> {
    h.try_json(&["replica", "ls", "--model", model])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn ready_on(h: &Harness, model: &str) -> Vec<String> {
    let mut nodes: Vec<String> = replicas(h, model)
        .iter()
        .filter(|r| r["state"] == "ready")
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn cordon_keeps_new_replicas_off_and_drain_moves_them_without_a_gap() {
    let h = Harness::new();
    let _c = h.coordinator("");
    let _a = h.agent("node-a", 1, "");
    let _b = h.agent("node-b", 1, "");
    h.wait_ready_nodes(2);

    let out = h.cli(&["node", "cordon", "node-b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nodes = h.json(&["node", "ls"]);
    assert_eq!(nodes_in_state(&nodes, "cordoned"), vec!["node-b"]);
    h.apply(&h.model_spec("moving", 1, "replicas = 1", &demo_command(&[]), ""));
    wait_until(Duration::from_secs(30), "ready on node-a", || {
        (ready_on(&h, "moving") == ["node-a"]).then_some(())
    });
    assert!(h.cli(&["node", "uncordon", "node-b"]).status.success());

    let out = h.cli(&["node", "drain", "node-a", "--deadline", "2m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        nodes_in_state(&h.json(&["node", "ls"]), "draining"),
        vec!["node-a"]
    );
    // Until the drain ends there is always a ready replica somewhere.
    wait_until(
        Duration::from_secs(40),
        "the replica moved to node-b",
        || {
            let ready = ready_on(&h, "moving");
            assert!(
                !ready.is_empty(),
                "a drain must never leave the model without a ready replica"
            );
            (ready == ["node-b"] && replicas(&h, "moving").len() == 1).then_some(())
        },
    );
    wait_until(
        Duration::from_secs(10),
        "node-a cordoned after the drain",
        || (nodes_in_state(&h.json(&["node", "ls"]), "cordoned") == ["node-a"]).then_some(()),
    );
    let events = h.json(&["events", "--node", "node-a"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("drain finished")));

    let err = h.cli(&["node", "drain", "no-such-node"]);
    assert!(!err.status.success());
    assert!(
        stderr(&err).contains("node `no-such-node` not found"),
        "{}",
        stderr(&err)
    );
}

#[test]
fn a_lost_node_is_replaced_and_its_return_leaves_exactly_the_desired_count() {
    let h = Harness::new();
    let (_c, mut a) = h.one_node_fleet(1, "");
    h.apply(&h.model_spec("resilient", 1, "replicas = 1", &demo_command(&[]), ""));
    wait_until(Duration::from_secs(30), "ready on node-a", || {
        (ready_on(&h, "resilient") == ["node-a"]).then_some(())
    });
    let _b = h.agent("node-b", 1, "");
    h.wait_ready_nodes(2);

    // node-a goes silent (its agent dies; its server keeps running there).
    a.kill9();
    wait_until(
        Duration::from_secs(30),
        "a replacement ready on node-b",
        || {
            ready_on(&h, "resilient")
                .contains(&"node-b".to_string())
                .then_some(())
        },
    );
    let events = h.json(&["events", "--model", "resilient"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "replace"),
        "{events}"
    );

    // node-a returns with its old replica: the total settles at desired.
    let _a2 = h.agent("node-a", 1, "");
    wait_until(Duration::from_secs(30), "exactly one replica again", || {
        let rs = replicas(&h, "resilient");
        let live: Vec<_> = rs
            .iter()
            .filter(|r| r["state"] == "ready" || r["state"] == "starting")
            .collect();
        (live.len() == 1 && rs.len() == 1).then_some(())
    });
    let models = h.json(&["model", "ls"]);
    assert_eq!(models[0]["ready_replicas"], 1);
}
