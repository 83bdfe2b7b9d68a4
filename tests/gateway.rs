//! The request gateway end to end: a real coordinator, agents with
//! simulated GPUs, real model servers (the demo server, a fault-injecting
//! test server, llama.cpp when present) and real `gpufleet gateway`
//! processes, all on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A gateway process and its port.
struct Gw {
    _proc: Proc,
    port: u16,
}

impl Gw {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Starts `gpufleet gateway` against the harness's coordinator and waits
/// until it has a routing table; `extra` replaces or adds config keys.
fn gateway(h: &Harness, name: &str, extra: &str) -> Gw {
    let port = free_port();
    let base = format!(
        "listen = \"127.0.0.1:{port}\"\ncoordinator = \"{}\"\nname = \"{name}\"\nhold_timeout = \"60s\"\nreport_interval = \"250ms\"\n",
        h.coordinator_url()
    );
    let cfg = h.write(&format!("{name}.toml"), &overridden(&base, extra));
    let proc = h.spawn(name, &["gateway", "--config", cfg.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(20),
        "the gateway's routing table",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http("GET", port, "/healthz", "").0 == 200).then_some(())
        },
    );
    Gw { _proc: proc, port }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs `body` and returns (status, Retry-After, body text).
async fn post(url: &str, body: &Value) -> (u16, Option<String>, String) {
    let resp = client().post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.text().await.unwrap_or_default())
}

/// GETs `url`; the body, whatever the status.
async fn get_text(url: &str) -> String {
    let resp = client().get(url).send().await.unwrap();
    resp.text().await.unwrap()
}

async fn status_of(gw: &Gw) -> Value {
    serde_json::from_str(&get_text(&gw.url("/status")).await).unwrap()
}

/// Applies `name`, served by demo model servers that answer as `name`;
/// `args` are more of their arguments, `tail` goes after `[server]`'s keys.
fn apply_demo(h: &Harness, name: &str, args: &[&str], tail: &str) {
    let mut all = vec!["--model-name", name];
    all.extend(args);
    h.apply(&h.model_spec(name, 1, "", &demo_command(&all), tail));
}

fn model(h: &Harness, name: &str) -> Option<Value> {
    h.try_json(&["model", "ls"])?
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// The value of an unlabelled-or-labelled series in a metrics text, summed.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(gw: &Gw) -> String {
    get_text(&gw.url("/metrics")).await
}

/// A coordinator and one agent running `model` as `replicas` replicas of
/// the fault-injecting test server (one GPU each); its files are in `dir`.
struct FixtureFleet {
    dir: PathBuf,
    _procs: [Proc; 2],
}

impl FixtureFleet {
    /// None, with a loud SKIPPED, when python3 is missing.
    fn start(h: &Harness, model: &str, replicas: u32) -> Option<FixtureFleet> {
        let dir = h.path("fixture");
        let command = fixture_command(&dir)?;
        let coordinator = h.coordinator("");
        // The agent lets path arguments through only from where it is told.
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let allowed = format!(
            "allowed_paths = [\"{}\", \"{}\"]",
            fixtures.display(),
            dir.display()
        );
        let agent = h.agent("node-a", replicas, &allowed);
        h.wait_ready_nodes(1);
        let top = format!("replicas = {replicas}");
        h.apply(&h.model_spec(model, 1, &top, &command, ""));
        Some(FixtureFleet {
            dir,
            _procs: [coordinator, agent],
        })
    }
}

/// The fault-injecting test server, or None (with a loud SKIPPED) when
/// python3 is missing.
fn fixture_command(dir: &Path) -> Option<String> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 is not installed; the gateway's fault tests need it for tests/fixtures/replica.py");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replica.py");
    std::fs::create_dir_all(dir).unwrap();
    Some(format!(
        "[\"{}\", \"--port\", \"{{port}}\", \"--dir\", \"{}\"]",
        script.display(),
        dir.display()
    ))
}

fn hits(dir: &Path, port: u64) -> usize {
    std::fs::read_to_string(dir.join(format!("hits-{port}")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn ready_ports(h: &Harness, model: &str) -> Vec<u64> {
    let replicas = h.json(&["replica", "ls", "--model", model]);
    replicas
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "ready")
        .map(|r| r["port"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_at_zero_holds_requests_wakes_and_then_serves_them() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(2, "");
    apply_demo(
        &h,
        "sleepy",
        &["--token-time", "5ms", "--tokens", "4"],
        "[scaling]\nmin_replicas = 0\nmax_replicas = 1\nscale_to_zero_after = \"1h\"",
    );
    let gw = gateway(&h, "gw", "");
    assert_eq!(model(&h, "sleepy").unwrap()["desired_replicas"], 0);

    // Three requests arrive while the model has no replica: all are held,
    // the first wakes the model, and all are answered once it is ready.
    let url = gw.url("/v1/completions");
    let sends: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(
                async move { post(&url, &json!({"model": "sleepy", "prompt": "hi"})).await },
            )
        })
        .collect();
    for s in sends {
        let (status, _, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["choices"][0]["text"], " the fleet keeps weights");
    }
    let events = h.json(&["events", "--model", "sleepy"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "wake"),
        "the gateway woke the model: {events}"
    );
    let m = metrics_of(&gw).await;
    assert_eq!(
        metric(&m, "gpufleet_gateway_wait_seconds_count{model=\"sleepy\"}"),
        3.0,
        "{m}"
    );
    // They waited for a cold start, not a millisecond.
    assert!(
        metric(
            &m,
            "gpufleet_gateway_wait_seconds_bucket{model=\"sleepy\",le=\"0.1\"}"
        ) < 3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "gpufleet_gateway_in_flight{model=\"sleepy\"}"),
        0.0
    );
    assert_promtool_accepts(&m, "gateway");
}

/// A burst held at zero is demand before any replica is ready: the model
/// is sized for it while its first replica still loads, not once that one
/// is ready to be scraped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_held_at_zero_sizes_the_wake_before_a_replica_is_ready() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(4, "");
    apply_demo(
        &h,
        "burst",
        &[
            "--concurrency",
            "2",
            "--init-time",
            "8s",
            "--token-time",
            "20ms",
            "--tokens",
            "10",
        ],
        "max_concurrency = 2
[scaling]
min_replicas = 0
max_replicas = 4
target_ongoing_requests = 2
stable_window = \"6s\"\npanic_window = \"2s\"\nscale_to_zero_after = \"1h\"",
    );
    let gw = gateway(&h, "gw", "");
    assert_eq!(model(&h, "burst").unwrap()["desired_replicas"], 0);
    let url = gw.url("/v1/completions");
    let sends: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &json!({"model": "burst", "prompt": "x"})).await })
        })
        .collect();
    let sized = tokio::task::block_in_place(|| {
        wait_until(
            Duration::from_secs(8),
            "the wake sized for the burst",
            || model(&h, "burst").filter(|m| m["desired_replicas"].as_u64() >= Some(3)),
        )
    });
    assert_eq!(
        sized["ready_replicas"], 0,
        "sized before a replica was ready: {sized}"
    );
    for s in sends {
        let (status, _, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflow_gets_429_a_long_hold_503_and_bad_requests_clear_errors() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    apply_demo(
        &h,
        "pinned",
        &[],
        "[scaling]\nmin_replicas = 0\nmax_replicas = 1",
    );
    // Pinned to zero: nothing can wake it, so held requests stay held.
    let out = h.cli(&["model", "scale", "pinned", "--replicas", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gw = gateway(&h, "gw", "queue_capacity = 2\nhold_timeout = \"2s\"\nmax_body = \"1KiB\"\nrequest_read_timeout = \"1s\"");

    let url = gw.url("/v1/completions");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(
                async move { post(&url, &json!({"model": "pinned", "prompt": "x"})).await },
            )
        })
        .collect();
    // Once both are queued, the third overflows at once.
    let queued = || async {
        let s = status_of(&gw).await;
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "pinned")
            .unwrap()["queued"]
            .as_u64()
            .unwrap()
    };
    for _ in 0..100 {
        if queued().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, retry, body) = post(&url, &json!({"model": "pinned", "prompt": "x"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["model"], "pinned");
    assert_eq!(err["error"]["reason"], "queue_full");

    // The held ones give up after hold_timeout with 503, naming why.
    for s in held {
        let (status, retry, body) = s.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(retry.is_some());
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"]["reason"], "hold_timeout");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("pinned to 0"),
            "{body}"
        );
    }

    // Bad requests: each its own status and a message that says what is wrong.
    let raw = |body: &'static str| {
        let url = url.clone();
        async move {
            let resp = client().post(&url).body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (status, v["error"]["reason"].as_str().unwrap().to_string())
        }
    };
    assert_eq!(raw("{not json").await, (400, "invalid_json".into()));
    assert_eq!(
        raw("{\"prompt\":\"x\"}").await,
        (400, "missing_model".into())
    );
    assert_eq!(
        raw("{\"model\":\"nope\"}").await,
        (404, "unknown_model".into())
    );
    // OpenAI's `GET /v1/models/{model}`: the model object, or 404 naming
    // the fleet's models.
    let (status, body) = http("GET", gw.port, "/v1/models/pinned", "");
    assert_eq!(status, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("pinned"), Some("model"))
    );
    assert!(m["created"].as_u64().unwrap() > 1_700_000_000, "{body}");
    let (status, body) = http("GET", gw.port, "/v1/models/nope", "");
    assert_eq!(status, 404, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["reason"], "unknown_model");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not served here; models:") && message.contains("pinned"),
        "{body}"
    );
    let big = json!({"model": "pinned", "prompt": "x".repeat(4096)});
    let (status, _, body) = post(&url, &big).await;
    assert_eq!(status, 413, "{body}");

    // A client that trickles its request head holds only its own
    // connection, and is cut off after request_read_timeout.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (status, _) = tokio::task::spawn_blocking({
        let port = gw.port;
        move || http("GET", port, "/v1/models", "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "another client is served meanwhile");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// Waits until `n` replicas of `model` are ready and in `gw`'s table;
/// their ports.
fn serving(h: &Harness, gw: &Gw, model: &str, n: usize) -> Vec<u64> {
    let ports = wait_until(Duration::from_secs(30), "ready replicas", || {
        let p = ready_ports(h, model);
        (p.len() == n).then_some(p)
    });
    wait_until(
        Duration::from_secs(10),
        "the replicas at the gateway",
        || {
            let (_, s) = http("GET", gw.port, "/status", "");
            (s.matches("\"address\"").count() == n).then_some(())
        },
    );
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_pass_through_byte_for_byte() {
    let h = Harness::new();
    let Some(_fleet) = FixtureFleet::start(&h, "streamer", 1) else {
        return;
    };
    let gw = gateway(&h, "gw", "");
    let port = wait_until(Duration::from_secs(30), "a ready replica", || {
        ready_ports(&h, "streamer").first().copied()
    });

    let body = json!({"model": "streamer", "prompt": "x", "stream": true});
    let direct = client()
        .post(format!("http://127.0.0.1:{port}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let resp = client()
            .post(gw.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let via = resp.bytes().await.unwrap();
        assert_eq!(via, direct, "{path}: the gateway changed the stream");
    }
    assert!(String::from_utf8_lossy(&direct).contains("café ✓"));
}

/// SIGTERM: the gateway takes no new connection, lets a request in flight
/// (its stream half sent) finish on the connection it came in on, and
/// exits 0 once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_gateway_finishes_requests_in_flight_then_exits() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    apply_demo(&h, "slow", &["--token-time", "100ms", "--tokens", "15"], "");
    let mut gw = gateway(&h, "gw", "");
    let replica = serving(&h, &gw, "slow", 1)[0];

    let body = json!({"model": "slow", "prompt": "x", "stream": true});
    let direct_url = format!("http://127.0.0.1:{replica}/v1/completions");
    let (status, _, direct) = post(&direct_url, &body).await;
    assert_eq!(status, 200, "{direct}");
    let mut resp = client()
        .post(gw.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
    gw._proc.signal(libc::SIGTERM);
    let port = gw.port;
    wait_until(Duration::from_secs(5), "new connections refused", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        text.matches("data: ").count(),
        direct.matches("data: ").count(),
        "{text}"
    );
    let exited = wait_until(Duration::from_secs(10), "the gateway to exit", || {
        gw._proc.exited()
    });
    assert_eq!(exited.code(), Some(0), "{}", gw._proc.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_failing_before_the_first_byte_is_retried_never_after() {
    let h = Harness::new();
    let Some(fleet) = FixtureFleet::start(&h, "flaky", 2) else {
        return;
    };
    let dir = fleet.dir.clone();
    let gw = gateway(&h, "gw", "");
    let ports = serving(&h, &gw, "flaky", 2);
    let (bad, good) = (ports[0], ports[1]);
    std::fs::write(dir.join(format!("fault-{bad}")), "reset").unwrap();

    // Resets before any byte: every request still succeeds, on the good one.
    let body = json!({"model": "flaky", "prompt": "x"});
    let mut sent = 0;
    while metric(&metrics_of(&gw).await, "gpufleet_gateway_retries_total") < 1.0 {
        sent += 1;
        assert!(sent <= 60, "the faulty replica was never chosen");
        let (status, _, reply) = post(&gw.url("/v1/completions"), &body).await;
        assert_eq!(status, 200, "{reply}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["port"], good);
        if sent % 5 == 0 {
            // Past the faulty replica's cooldown, so it is chosen again.
            tokio::time::sleep(Duration::from_millis(2100)).await;
        }
    }
    assert!(hits(&dir, bad) >= 1);

    // Cut after the first bytes: the client sees a broken stream and the
    // request is not sent again anywhere.
    std::fs::write(dir.join(format!("fault-{bad}")), "cut").unwrap();
    let retries_before = metric(&metrics_of(&gw).await, "gpufleet_gateway_retries_total");
    let (bad_before, good_before) = (hits(&dir, bad), hits(&dir, good));
    let mut broken = 0;
    let mut requests = 0;
    while broken == 0 {
        requests += 1;
        assert!(requests <= 60, "the cutting replica was never chosen");
        let resp = client()
            .post(gw.url("/v1/completions"))
            .json(&json!({"model": "flaky", "prompt": "x", "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        if resp.bytes().await.is_err() {
            broken += 1;
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    assert_eq!(
        hits(&dir, bad) - bad_before + hits(&dir, good) - good_before,
        requests,
        "each request reached exactly one replica"
    );
    assert_eq!(
        metric(&metrics_of(&gw).await, "gpufleet_gateway_retries_total"),
        retries_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_with_one_replica_retries_on_it_once_its_cooldown_ends() {
    let h = Harness::new();
    let Some(fleet) = FixtureFleet::start(&h, "single", 1) else {
        return;
    };
    // Far shorter than the client's timeout: a retry left waiting in the
    // queue shows as a 503, not as a hung client.
    let gw = gateway(&h, "gw", "hold_timeout = \"15s\"");
    let ports = serving(&h, &gw, "single", 1);
    std::fs::write(fleet.dir.join(format!("fault-{}", ports[0])), "reset-once").unwrap();
    // The one replica resets the first try; nothing else frees a slot or
    // changes the table, yet the retry goes out when the cooldown ends.
    let (status, _, reply) = post(
        &gw.url("/v1/completions"),
        &json!({"model": "single", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(hits(&fleet.dir, ports[0]), 2);
    assert_eq!(
        metric(&metrics_of(&gw).await, "gpufleet_gateway_retries_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_connection_the_replica_closed_is_resent_not_held_against_it() {
    let h = Harness::new();
    let Some(fleet) = FixtureFleet::start(&h, "closer", 1) else {
        return;
    };
    // Shorter than the 2 s a failed replica is passed over: a resend that
    // waited for that shows as a 503.
    let gw = gateway(&h, "gw", "hold_timeout = \"1s\"");
    let port = serving(&h, &gw, "closer", 1)[0];
    // As llama.cpp after a streamed response: a kept-alive connection
    // closes under the next request, with no answer.
    std::fs::write(fleet.dir.join(format!("fault-{port}")), "drop-reused").unwrap();
    for n in 0..3 {
        let (status, _, reply) = post(
            &gw.url("/v1/completions"),
            &json!({"model": "closer", "prompt": "x"}),
        )
        .await;
        assert_eq!(status, 200, "request {n}: {reply}");
    }
    assert_eq!(hits(&fleet.dir, port), 3);
    assert!(metric(&metrics_of(&gw).await, "gpufleet_gateway_retries_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retiring_replica_receives_nothing_new() {
    let h = Harness::new();
    let Some(fleet) = FixtureFleet::start(&h, "shrink", 2) else {
        return;
    };
    let dir = fleet.dir.clone();
    let gw = gateway(&h, "gw", "");
    let ports = wait_until(Duration::from_secs(30), "two ready replicas", || {
        let p = ready_ports(&h, "shrink");
        (p.len() == 2).then_some(p)
    });
    let out = h.cli(&["model", "scale", "shrink", "--replicas", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The gateway hears of the retirement over its stream.
    let kept = wait_until(
        Duration::from_secs(10),
        "one replica at the gateway",
        || {
            let (_, s) = http("GET", gw.port, "/status", "");
            let v: Value = serde_json::from_str(&s).ok()?;
            let replicas = v["models"][0]["replicas"].as_array()?.clone();
            (replicas.len() == 1).then(|| {
                replicas[0]["address"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
        },
    );
    let retiring = *ports.iter().find(|p| **p != kept).unwrap();
    let before = hits(&dir, retiring);
    for _ in 0..20 {
        let (status, _, body) = post(
            &gw.url("/v1/completions"),
            &json!({"model": "shrink", "prompt": "x"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        hits(&dir, retiring),
        before,
        "the retiring replica got new requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_queue_drives_a_scale_up() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(4, "");
    // Each replica takes 2 requests at once; scrapes alone see 2 ongoing,
    // exactly the target: only the queue at the gateway shows the demand.
    apply_demo(
        &h,
        "queued",
        &["--concurrency", "2", "--token-time", "100ms", "--tokens", "40"],
        "max_concurrency = 2\n[scaling]\nmin_replicas = 1\nmax_replicas = 3\ntarget_ongoing_requests = 2\nstable_window = \"6s\"\npanic_window = \"2s\"",
    );
    wait_until(Duration::from_secs(30), "one ready replica", || {
        (model(&h, "queued")?["ready_replicas"] == 1).then_some(())
    });
    let gw = gateway(&h, "gw", "");
    let url = gw.url("/v1/completions");
    let sends: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(
                async move { post(&url, &json!({"model": "queued", "prompt": "x"})).await },
            )
        })
        .collect();
    tokio::task::block_in_place(|| {
        wait_until(
            Duration::from_secs(15),
            "scale-up to 3 from the gateway queue",
            || (model(&h, "queued")?["desired_replicas"] == 3).then_some(()),
        );
    });
    for s in sends {
        let (status, _, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_a_fleet() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    apply_demo(
        &h,
        "shared",
        // Its batch said as vLLM says it: each gateway's limit per replica.
        &[
            "--token-time",
            "5ms",
            "--tokens",
            "4",
            "--max-num-seqs",
            "3",
        ],
        "[scaling]\nmin_replicas = 0\nmax_replicas = 1\nscale_to_zero_after = \"1h\"",
    );
    let one = gateway(&h, "gw-1", "");
    let two = gateway(&h, "gw-2", "");
    // Both hold at zero; either wakes the model; both are served by the same replica.
    let a = tokio::spawn({
        let url = one.url("/v1/completions");
        async move { post(&url, &json!({"model": "shared", "prompt": "x"})).await }
    });
    let b = tokio::spawn({
        let url = two.url("/v1/chat/completions");
        let body = json!({"model": "shared", "messages": [{"role": "user", "content": "x"}]});
        async move { post(&url, &body).await }
    });
    assert_eq!(a.await.unwrap().0, 200);
    let (status, _, chat) = b.await.unwrap();
    assert_eq!(status, 200, "{chat}");
    assert!(chat.contains("chat.completion"), "{chat}");
    let (s1, s2) = (status_of(&one).await, status_of(&two).await);
    assert_eq!(
        s1["models"][0]["replicas"],
        s2["models"][0]["replicas"].clone()
    );
    assert_eq!(s1["models"][0]["max_concurrency"], 3, "{s1}");
    assert_eq!(s1["models"][0]["replicas"][0]["max_concurrency"], 3, "{s1}");
    let (status, _, body) = post(
        &two.url("/v1/completions"),
        &json!({"model": "shared", "prompt": "y"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // `gateway status` reads either.
    let out = std::process::Command::new(BIN)
        .args(["gateway", "status", "--gateway", &two.url(""), "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "gw-2");
    assert_eq!(v["connected"], true);
}

/// The real llama.cpp server behind the gateway: woken from zero by a
/// streamed chat request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llama_cpp_behind_the_gateway_wakes_and_streams() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/engines");
    let server = std::env::var("LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or(root.join("llama-server"));
    let weights = std::env::var("LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or(root.join("tiny-llama.gguf"));
    if !server.exists() || !weights.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have ../shared/engines"
        );
        eprintln!(
            "SKIPPED: {} or {} is missing; the llama.cpp gateway test needs them",
            server.display(),
            weights.display()
        );
        return;
    }
    let h = Harness::new();
    let _c = h.coordinator("");
    // The weights must live under the agent's model roots.
    let models = h.path("models");
    std::fs::create_dir_all(&models).unwrap();
    let gguf = models.join("tiny-llama.gguf");
    std::fs::copy(&weights, &gguf).unwrap();
    let _a = h.agent("node-a", 1, "");
    h.wait_ready_nodes(1);
    let spec = h.write(
        "llama.toml",
        &format!(
            "name = \"tiny\"\nweights = \"{}\"\n[server]\npreset = \"llamacpp\"\ncommand = [\"{}\", \"-m\", \"{{weights}}\", \"--port\", \"{{port}}\", \"--host\", \"127.0.0.1\", \"--metrics\", \"--parallel\", \"3\", \"-c\", \"1536\"]\ngpus = 1\ngpu_memory = \"1GiB\"\nready_timeout = \"60s\"\n[scaling]\nmin_replicas = 0\nmax_replicas = 1\nscale_to_zero_after = \"1h\"\n",
            gguf.display(),
            server.display()
        ),
    );
    h.apply(&spec);
    let gw = gateway(&h, "gw", "hold_timeout = \"90s\"");
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("data: "), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let (status, _, body) = post(
        &gw.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "hi", "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = metrics_of(&gw).await;
    assert_eq!(
        metric(&m, "gpufleet_gateway_ttft_seconds_count{model=\"tiny\"}"),
        2.0,
        "{m}"
    );
    // The spec sets no max_concurrency: the engine's `--parallel 3` slots
    // (not the gateway's default of 8) bound what the replica is sent.
    let status = status_of(&gw).await;
    assert_eq!(
        status["models"][0]["replicas"][0]["max_concurrency"], 3,
        "{status}"
    );
}

#[test]
fn tokens_and_tls_guard_both_sides_of_the_gateway() {
    const ADMIN: &str = "admin-0123456789abcdef";
    const CLIENT: &str = "client-0123456789abcdef";
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let certs = h.path("certs");
    tls_init(&certs, "gw");
    const WAKE: &str = "wake-0123456789abcdef";
    let tokens = h.write("tokens", &format!("admin {ADMIN}\nwake {WAKE}\n"));
    // A wake token is all a gateway needs.
    let token = h.write("gw-token", &format!("{WAKE}\n"));
    let clients = h.write("client-tokens", &format!("read {CLIENT}\n"));
    for f in [&tokens, &token, &clients] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let _c = h.coordinator(&format!(
        "{}[auth]\ntokens_file = \"{}\"\n",
        tls_table(&certs, "coordinator"),
        tokens.display()
    ));
    let https = h.https_url();
    let spec = h.write(
        "m.toml",
        "name = \"guarded\"\nweights = \"/srv/models/x\"\nreplicas = 0\n[server]\npreset = \"vllm\"\ncommand = [\"/bin/sleep\", \"1000\"]\ngpus = 1\ngpu_memory = \"1GiB\"\n",
    );
    let ca = certs.join("ca.pem");
    wait_until(
        Duration::from_secs(20),
        "the model applied over TLS",
        || {
            let out = h.cli_env(
                &["model", "apply", "-f", spec.to_str().unwrap()],
                &[
                    ("GPUFLEET_COORDINATOR", &https),
                    ("GPUFLEET_CA", ca.to_str().unwrap()),
                    ("GPUFLEET_TOKEN", ADMIN),
                ],
            );
            out.status.success().then_some(())
        },
    );

    // With the CA, its own certificate and a wake token: it routes.
    let tls = tls_table(&certs, "gw");
    let port = free_port();
    let cfg = h.write(
        "gw.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ncoordinator = \"{https}\"\n{tls}[auth]\ncoordinator_token_file = \"{}\"\nclient_tokens_file = \"{}\"\n",
            token.display(),
            clients.display()
        ),
    );
    let _gw = h.spawn("gw", &["gateway", "--config", cfg.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(20),
        "the routing table over mTLS",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http("GET", port, "/healthz", "").0 == 200).then_some(())
        },
    );
    // Clients need their token.
    let (status, body) = http("GET", port, "/v1/models", "");
    assert_eq!(status, 401, "{body}");
    let models = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(models.starts_with("HTTP/1.1 200"), "{models}");
    assert!(models.contains("\"id\":\"guarded\""), "{models}");

    // Without a token the coordinator refuses the stream, and says why.
    let port2 = free_port();
    let cfg2 = h.write(
        "gw2.toml",
        &format!(
            "listen = \"127.0.0.1:{port2}\"\ncoordinator = \"{https}\"\n[tls]\nca = \"{}\"\n",
            ca.display()
        ),
    );
    let gw2 = h.spawn("gw2", &["gateway", "--config", cfg2.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "the refusal in the log", || {
        gw2.log_text().contains("requires a token").then_some(())
    });
    assert_eq!(http("GET", port2, "/healthz", "").0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_hanging_up_frees_its_place_and_its_replica_slot() {
    let h = Harness::new();
    let (_c, _a) = h.one_node_fleet(1, "");
    apply_demo(
        &h,
        "one",
        &["--token-time", "50ms", "--tokens", "40"],
        "max_concurrency = 1",
    );
    let gw = gateway(&h, "gw", "");
    let replica_port = wait_until(Duration::from_secs(30), "a ready replica", || {
        ready_ports(&h, "one").first().copied()
    });
    wait_until(
        Duration::from_secs(10),
        "the replica at the gateway",
        || {
            let (_, s) = http("GET", gw.port, "/status", "");
            s.contains("\"address\"").then_some(())
        },
    );
    let model_state = || async {
        let s = status_of(&gw).await;
        let m = s["models"][0].clone();
        (
            m["queued"].as_u64().unwrap(),
            m["in_flight"].as_u64().unwrap(),
        )
    };

    // A streams and holds the only slot.
    let mut a = client()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "one", "prompt": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(a.chunk().await.unwrap().is_some());
    assert_eq!(model_state().await, (0, 1));

    // B waits behind it, then gives up: its place is gone.
    let b = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "one", "prompt": "x"}))
        .send()
        .await;
    assert!(b.is_err(), "B should have timed out while held");
    let mut state = model_state().await;
    for _ in 0..50 {
        if state == (0, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        state = model_state().await;
    }
    assert_eq!(state, (0, 1), "the abandoned request left the queue");

    // A hangs up mid-stream: the slot comes back, and the replica stops too.
    drop(a);
    for _ in 0..100 {
        state = model_state().await;
        if state == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, (0, 0), "the hung-up stream released its slot");
    let (status, _, body) = post(
        &gw.url("/v1/completions"),
        &json!({"model": "one", "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let metrics = get_text(&format!("http://127.0.0.1:{replica_port}/metrics")).await;
    assert_eq!(
        metric(&metrics, "vllm:num_requests_running"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_routing_keeps_a_tenant_on_one_replica_across_gateways() {
    let h = Harness::new();
    let Some(_fleet) = FixtureFleet::start(&h, "tenants", 3) else {
        return;
    };
    let one = gateway(&h, "gw-1", "routing = \"prefix\"");
    let two = gateway(&h, "gw-2", "routing = \"prefix\"");
    wait_until(
        Duration::from_secs(30),
        "three replicas at both gateways",
        || {
            let count = |port| {
                http("GET", port, "/status", "")
                    .1
                    .matches("\"address\"")
                    .count()
            };
            (count(one.port) == 3 && count(two.port) == 3).then_some(())
        },
    );
    let mut homes = std::collections::BTreeMap::new();
    for tenant in 0..8 {
        let system = format!("You are the assistant of tenant {tenant}. ").repeat(12);
        let mut ports = std::collections::BTreeSet::new();
        for turn in 0..4 {
            let gw = if turn % 2 == 0 { &one } else { &two };
            let body = json!({"model": "tenants", "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("question {turn}")}
            ]});
            let (status, _, reply) = post(&gw.url("/v1/chat/completions"), &body).await;
            assert_eq!(status, 200, "{reply}");
            let reply: Value = serde_json::from_str(&reply).unwrap();
            ports.insert(reply["port"].as_u64().unwrap());
        }
        assert_eq!(ports.len(), 1, "tenant {tenant} was served by {ports:?}");
        homes.insert(tenant, *ports.iter().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(
        distinct.len() >= 2,
        "eight tenants all on one replica: {homes:?}"
    );
    let m = metrics_of(&one).await;
    assert!(
        metric(
            &m,
            "gpufleet_gateway_placements_total{model=\"tenants\",how=\"prefix-hit\"}"
        ) >= 8.0,
        "{m}"
    );
}

#[test]
fn a_bad_gateway_config_exits_64_naming_the_key() {
    let h = Harness::new();
    let cfg = h.write("gw.toml", "listen = \"127.0.0.1:0\"\nqueue_capacity = -1\n");
    let out = std::process::Command::new(BIN)
        .args(["gateway", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("line 2: queue_capacity = -1 must be ≥ 0"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn before_its_first_routing_table_the_gateway_lists_no_models_it_says_why_as_for_unknown_paths() {
    let h = Harness::new();
    // No coordinator listens at the harness's address: no table comes.
    let port = free_port();
    let cfg = h.write(
        "gw.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ncoordinator = \"{}\"\n",
            h.coordinator_url()
        ),
    );
    let _gw = h.spawn("gw", &["gateway", "--config", cfg.to_str().unwrap()]);
    wait_until(Duration::from_secs(20), "the gateway listening", || {
        try_http("GET", port, "/healthz", "", "")
    });
    let (code, body) = http("GET", port, "/v1/models", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"no_routes\""), "{body}");
    let (code, body) = http(
        "POST",
        port,
        "/v1/completions",
        r#"{"model":"m","prompt":"x"}"#,
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"no_routes\""), "{body}");

    // Paths and methods it does not serve get OpenAI-shaped errors too.
    let (code, body) = http("POST", port, "/v1/embeddings", "{}");
    assert_eq!(code, 404, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["reason"], "unknown_path", "{body}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no /v1/embeddings"),
        "{body}"
    );
    let (code, body) = http("GET", port, "/v1/completions", "");
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("\"method_not_allowed\""), "{body}");
}
