//! Tests of the load generator against real demo model servers and a stub
//! coordinator on loopback.

use super::*;
use crate::demo::server::tests::TestServer;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;

fn args(target: &str, rps: f64, duration_ms: u64) -> LoadArgs {
    let mut cli = Cli::try_parse_from(["load", "--url", target, "--rps", "1", "--duration", "1s"])
        .unwrap()
        .load;
    cli.rps = rps;
    cli.duration = Duration::from_millis(duration_ms).into();
    cli.seed = Some(42);
    cli
}

fn model_args(coordinator: &str, model: &str, rps: f64, duration_ms: u64) -> LoadArgs {
    let mut a = args("http://unused", rps, duration_ms);
    a.url = None;
    a.model = Some(model.to_string());
    a.coordinator_http = coordinator.to_string();
    a
}

/// Requests a demo server has completed, read from its own metrics.
async fn served(server: &TestServer) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("vllm:request_success_total{"))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A coordinator that only answers /v1/endpoints, with `groups`.
async fn stub_coordinator(groups: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/endpoints", get(move || async move { Json(groups) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn fast(cfg: &mut crate::demo::server::ServerConfig) {
    cfg.token_time = Duration::from_millis(1);
    cfg.default_tokens = std::num::NonZeroU32::new(5).unwrap();
}

#[tokio::test]
async fn steady_load_against_one_server_completes_without_failures() {
    let server = TestServer::start_ready(fast).await;
    let report = run_load(args(&server.base, 50.0, 1000)).await.unwrap();

    assert!((30..=75).contains(&report.sent), "{report:?}");
    assert_eq!(
        (report.completed, report.failed),
        (report.sent, 0),
        "{report:?}"
    );
    assert!(report.failures.is_empty());
    assert!((report.achieved_rps - report.sent as f64 / report.duration_s).abs() < 1e-9);
    assert!(
        report.duration_s >= 1.0 && report.duration_s < 1.5,
        "{report:?}"
    );
    let (p50, max) = (report.p50_s.unwrap(), report.max_s.unwrap());
    assert!(p50 >= 0.005 && p50 <= max && max < 2.0, "{report:?}");
    assert_eq!(served(&server).await, report.completed as f64);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn model_load_spreads_round_robin_over_the_ready_replicas() {
    let a = TestServer::start_ready(fast).await;
    let b = TestServer::start_ready(fast).await;
    let coordinator = stub_coordinator(json!([
        {"targets": [a.addr.to_string()], "labels": {"model": "chat", "node": "n1"}},
        {"targets": [b.addr.to_string()], "labels": {"model": "chat", "node": "n2"}},
        {"targets": ["127.0.0.1:1"], "labels": {"model": "other"}},
    ]))
    .await;
    let report = run_load(model_args(&coordinator, "chat", 60.0, 500))
        .await
        .unwrap();

    assert!(report.sent >= 10, "{report:?}");
    assert_eq!(
        (report.completed, report.failed),
        (report.sent, 0),
        "{report:?}"
    );
    let (on_a, on_b) = (served(&a).await, served(&b).await);
    assert_eq!(on_a + on_b, report.sent as f64);
    // Equally fast replicas share the load (least outstanding, ties in turn).
    let share = on_a / report.sent as f64;
    assert!((0.3..=0.7).contains(&share), "{on_a} vs {on_b}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn the_idle_replica_gets_the_requests_while_another_is_busy() {
    // `slow` holds each request for a second; `quick` answers at once.
    let slow = TestServer::start_ready(|c| {
        c.token_time = Duration::from_millis(200);
        c.default_tokens = std::num::NonZeroU32::new(5).unwrap();
    })
    .await;
    let quick = TestServer::start_ready(fast).await;
    let coordinator = stub_coordinator(json!([
        {"targets": [slow.addr.to_string(), quick.addr.to_string()], "labels": {"model": "chat"}},
    ]))
    .await;
    let report = run_load(model_args(&coordinator, "chat", 40.0, 800))
        .await
        .unwrap();
    assert!(report.sent >= 15, "{report:?}");
    assert_eq!(report.completed, report.sent, "{report:?}");
    let (on_slow, on_quick) = (served(&slow).await, served(&quick).await);
    // Round-robin would give the slow one half; least outstanding gives it
    // only what arrives while the quick one is itself busy.
    assert!(on_slow <= 3.0, "slow {on_slow}, quick {on_quick}");
    assert_eq!(on_slow + on_quick, report.sent as f64);
    slow.stop().await.unwrap();
    quick.stop().await.unwrap();
}

/// A coordinator with no replica of "chat" until it has been asked to wake
/// it and `after_wake` has passed; counts the wake calls.
async fn waking_coordinator(
    replica: std::net::SocketAddr,
    after_wake: Duration,
) -> (String, Arc<AtomicUsize>) {
    let wakes = Arc::new(AtomicUsize::new(0));
    let first_wake = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (w, f) = (wakes.clone(), first_wake.clone());
    let app = Router::new()
        .route(
            "/v1/endpoints",
            get(move || {
                let started = f
                    .lock()
                    .unwrap()
                    .is_some_and(|t: Instant| t.elapsed() >= after_wake);
                let targets: Vec<String> = if started {
                    vec![replica.to_string()]
                } else {
                    vec![]
                };
                async move { Json(json!([{"targets": targets, "labels": {"model": "chat"}}])) }
            }),
        )
        .route(
            "/v1/models/chat/wake",
            post(move || {
                w.fetch_add(1, Ordering::SeqCst);
                first_wake.lock().unwrap().get_or_insert_with(Instant::now);
                async move {
                    (
                        axum::http::StatusCode::ACCEPTED,
                        Json(json!({"model": "chat", "desired_replicas": 1, "ready_replicas": 0})),
                    )
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), wakes)
}

#[tokio::test]
async fn a_model_without_replicas_is_woken_and_held_requests_complete_once_one_is_ready() {
    let server = TestServer::start_ready(fast).await;
    let (coordinator, wakes) = waking_coordinator(server.addr, Duration::from_millis(1500)).await;
    let mut a = model_args(&coordinator, "chat", 20.0, 500);
    a.timeout = Duration::from_secs(10).into();
    let started = std::time::Instant::now();
    let report = run_load(a).await.unwrap();

    assert!(report.sent > 0, "{report:?}");
    assert_eq!(
        (report.completed, report.failed),
        (report.sent, 0),
        "{report:?}"
    );
    assert_eq!(served(&server).await, report.sent as f64);
    // Held from the first wake until the replica was listed (1.5 s), and
    // re-read within a second after that.
    assert!(report.p50_s.unwrap() >= 1.0, "{report:?}");
    let wakes = wakes.load(Ordering::SeqCst);
    let waited = started.elapsed().as_secs_f64();
    assert!(wakes >= 2, "the held requests asked again: {wakes}");
    assert!(
        wakes as f64 <= waited + 1.0,
        "at most one wake call a second: {wakes} in {waited:.1} s"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn requests_held_past_the_timeout_fail_saying_no_replica_was_ready() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let (coordinator, wakes) = waking_coordinator(nowhere, Duration::from_secs(3600)).await;
    let mut a = model_args(&coordinator, "chat", 100.0, 200);
    a.timeout = Duration::from_millis(300).into();
    let report = run_load(a).await.unwrap();
    assert!(report.sent > 0);
    assert_eq!(report.failed, report.sent);
    assert_eq!(
        report.failures,
        BTreeMap::from([("no ready replica within 300ms".to_string(), report.sent)])
    );
    assert_eq!(report.p50_s, None);
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "one wake within a second");
}

#[tokio::test]
async fn an_unreachable_server_is_reported_not_raised() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let report = run_load(args(&url, 100.0, 200)).await.unwrap();
    assert!(report.sent > 0);
    assert_eq!(
        report.failures,
        BTreeMap::from([("cannot connect".to_string(), report.sent)])
    );
}

#[tokio::test]
async fn an_unreachable_coordinator_is_an_error_naming_it() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = run_load(model_args(&coordinator, "chat", 10.0, 100))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&coordinator), "{err}");
}

#[tokio::test]
async fn requests_still_running_at_the_timeout_count_as_timeouts() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_secs(1)).await;
    let mut a = args(&server.base, 50.0, 200);
    a.timeout = Duration::from_millis(300).into();
    let started = std::time::Instant::now();
    let report = run_load(a).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(report.sent > 0);
    assert_eq!(report.completed, 0);
    assert_eq!(
        report.failures,
        BTreeMap::from([("timeout".to_string(), report.sent)])
    );
}

#[tokio::test]
async fn server_errors_are_grouped_by_status() {
    // Still loading: every request is refused with 503.
    let server = TestServer::start(|c| c.init_time = Duration::from_secs(30)).await;
    let report = run_load(args(&server.base, 100.0, 200)).await.unwrap();
    assert!(report.sent > 0);
    assert_eq!(
        report.failures,
        BTreeMap::from([("http 503 Service Unavailable".to_string(), report.sent)])
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

#[test]
fn the_command_line_wants_exactly_one_target() {
    let base = ["load", "--rps", "5", "--duration", "10s"];
    let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
    assert!(parse(&[]).is_err(), "neither --url nor --model");
    assert!(parse(&["--url", "http://a:1", "--model", "m"]).is_err());
    let load = parse(&["--model", "m", "--ramp-to", "50"]).unwrap().load;
    assert_eq!(load.ramp_to, Some(50.0));
    assert_eq!(Duration::from(load.timeout), Duration::from_secs(60));
    assert!(matches!(
        Route::one("https://a:1"),
        Err(LoadError::BadUrl { .. })
    ));
    assert!(matches!(Route::one("a:1"), Err(LoadError::BadUrl { .. })));
}

#[test]
fn reports_render_as_a_table_or_one_json_object() {
    let report = LoadReport {
        sent: 10,
        completed: 7,
        failed: 3,
        failures: BTreeMap::from([("timeout".into(), 1), (NO_READY_REPLICA.into(), 2)]),
        duration_s: 2.0,
        achieved_rps: 5.0,
        p50_s: Some(0.1),
        p90_s: Some(0.2),
        p95_s: Some(0.25),
        p99_s: Some(0.3),
        max_s: Some(0.4),
    };
    let table = render_report(&report, Output::Table);
    assert!(
        table.contains("sent       10 in 2.0 s (5.0 req/s)"),
        "{table}"
    );
    assert!(
        table.contains("  no ready replica  2\n  timeout           1\n"),
        "{table}"
    );
    assert!(table.contains("p95 0.250 s"), "{table}");

    let json = render_report(&report, Output::Json);
    assert_eq!(json.lines().count(), 1);
    let v: Value = serde_json::from_str(&json).unwrap();
    for key in [
        "sent",
        "completed",
        "failed",
        "failures",
        "duration_s",
        "achieved_rps",
        "p50_s",
        "p90_s",
        "p95_s",
        "p99_s",
        "max_s",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(v["failures"]["no ready replica"], 2);
}

#[tokio::test]
async fn through_a_gateway_every_request_names_the_model() {
    let named = Arc::new(AtomicUsize::new(0));
    let seen = named.clone();
    let app = Router::new().route(
        "/v1/completions",
        post(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                if body["model"] == "chat" {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                Json(json!({"choices": [{"text": "ok"}]}))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut a = model_args("http://unused", "chat", 50.0, 300);
    a.gateway = Some(format!("http://{addr}"));
    let report = run_load(a).await.unwrap();
    assert!(report.sent > 0);
    assert_eq!(report.completed, report.sent, "{report:?}");
    assert_eq!(named.load(Ordering::Relaxed) as u64, report.sent);

    let mut bad = model_args("http://unused", "chat", 1.0, 100);
    bad.gateway = Some("ftp://x".into());
    let e = run_load(bad).await.unwrap_err().to_string();
    assert!(e.contains("--gateway ftp://x"), "{e}");
}
