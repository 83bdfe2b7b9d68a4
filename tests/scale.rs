//! The coordinator under many agents: `gpufleet bench swarm` against a real
//! coordinator at small scale, and agents that misbehave (reports far too
//! fast, a message over the size limit) closed with a reason that names them.
//! The big runs are benchmarks (docs/BENCHMARKS.md), not tests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use gpufleet::wire::pb;
use tokio_stream::StreamExt;

#[test]
fn a_swarm_of_agents_registers_gets_its_replicas_and_is_measured() {
    let h = Harness::new();
    let _c = h.coordinator("");
    wait_until(Duration::from_secs(20), "the coordinator", || {
        h.try_json(&["node", "ls"]).map(|_| ())
    });
    let metrics = format!("{}/metrics", h.http_url());
    let out = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .args([
            "--coordinator",
            &h.coordinator_url(),
            "-o",
            "json",
            "bench",
            "swarm",
            "--agents",
            "200",
            "--gpus",
            "4",
            "--replicas-per-node",
            "1",
            "--models",
            "10",
            "--ready-after",
            "1s",
            "--duration",
            "12s",
            "--settle-timeout",
            "90s",
            "--metrics",
            &metrics,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "bench swarm: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["agents_registered"], 200, "{r:#}");
    assert_eq!(r["sessions_failed"], 0, "{r:#}");
    // Every agent received an assignment, and every replica it was given
    // turned ready: 200 replicas over 10 models, plus the scale-up probes'
    // (retiring ones run out their grace).
    assert_eq!(r["agents_assigned"], 200, "{r:#}");
    assert_eq!(r["replicas_expected"], 200, "{r:#}");
    let ready = r["replicas_ready"].as_u64().unwrap();
    let probes = r["assignment_probes"].as_u64().unwrap();
    assert!((200..=200 + probes).contains(&ready), "{r:#}");
    // Nothing stopped but what the probes' scale-downs took back.
    assert!(r["replicas_stopped"].as_u64().unwrap() <= probes, "{r:#}");
    // Round trips were sampled and scale-ups reached their agents.
    assert!(r["rtt_samples"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["assignment_probes"].as_u64().unwrap() >= 1, "{r:#}");
    // The coordinator's own measurements were read from its /metrics.
    assert!(r["coordinator_cpu_pct"].is_number(), "{r:#}");
    assert!(r["coordinator_rss_bytes"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["tick_p99_ms"].is_number(), "{r:#}");
    assert!(r["report_handling_p99_ms"].is_number(), "{r:#}");
    assert!(r["swarm_cpu_pct"].is_number(), "{r:#}");
    // The swarm cleaned up after itself.
    let models = h.json(&["model", "ls"]);
    assert_eq!(models.as_array().map(Vec::len), Some(0), "{models:#}");
}

fn hello(node: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_name: node.into(),
            agent_instance: "x".into(),
            ..Default::default()
        })),
    }
}

fn report(seq: u64, padding: usize) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Report(pb::Report {
            seq,
            host: Some(pb::HostSample::default()),
            replicas: vec![pb::ReplicaStatus {
                id: "padding".into(),
                reason: "x".repeat(padding),
                ..Default::default()
            }]
            .into_iter()
            .filter(|_| padding > 0)
            .collect(),
            ..Default::default()
        })),
    }
}

/// Opens a session as `node`, sends `messages` after Hello, and returns the
/// status that ended the coordinator's side of the stream.
async fn session_end(url: String, node: &str, messages: Vec<pb::AgentMessage>) -> tonic::Status {
    let mut client = pb::agent_session_client::AgentSessionClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tx.send(hello(node)).await.unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        // Hold the stream open: the coordinator, not the agent, ends it.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("closed without a reason"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("the coordinator ends the session");
    sender.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_flood_or_send_oversized_messages_are_closed_and_named() {
    let h = Harness::new();
    let c = h.coordinator("");
    let h = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "the coordinator", || {
            h.try_json(&["node", "ls"]).map(|_| ())
        });
        h
    })
    .await
    .unwrap();
    let url = h.coordinator_url();

    // 500 reports at once: a hundred times what an agent sends.
    let flood = (1..=500).map(|i| report(i, 0)).collect();
    let ended = session_end(url.clone(), "flood-1", flood).await;
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended
            .message()
            .contains("node flood-1 sent reports faster than 50/s"),
        "{}",
        ended.message()
    );

    // A report of 5 MiB: over the 4 MiB limit.
    let big = vec![report(1, 5 << 20)];
    let ended = session_end(url.clone(), "big-1", big).await;
    assert_eq!(ended.code(), tonic::Code::InvalidArgument, "{ended:?}");
    assert!(
        ended
            .message()
            .contains("node big-1 sent a message the coordinator cannot take")
            && ended.message().contains("4194304 bytes"),
        "{}",
        ended.message()
    );

    // A well-behaved agent is still served, and the log names the others.
    let quiet = (1..=3).map(|i| report(i, 0)).collect::<Vec<_>>();
    let mut client = pb::agent_session_client::AgentSessionClient::connect(url)
        .await
        .unwrap();
    let mut messages = vec![hello("quiet-1")];
    messages.extend(quiet);
    let mut inbound = client
        .session(tokio_stream::iter(messages).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("an assignment")
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::coordinator_message::Msg::Assignment(_))
    ));
    let log = c.log_text();
    assert!(
        log.contains("flood-1") && log.contains("agent session closed"),
        "{log}"
    );
    assert!(log.contains("big-1"), "{log}");
    let page = tokio::task::spawn_blocking(move || http("GET", h.http_port, "/metrics", "").1)
        .await
        .unwrap();
    assert!(
        page.contains("gpufleet_agent_sessions_refused_total{reason=\"report_rate\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("gpufleet_agent_sessions_refused_total{reason=\"bad_message\"} 1"),
        "{page}"
    );
}
