//! Scraper behaviour against real engine output (tests/fixtures/metrics) and
//! over a window of scrapes.

use std::time::{Duration, Instant};

use super::*;

const VLLM_QWEN3: &str = include_str!("../../../tests/fixtures/metrics/vllm_qwen3_0.6b.txt");
const VLLM_DP2: &str = include_str!("../../../tests/fixtures/metrics/vllm_dp2_engines.txt");
const VLLM_KV: &str = include_str!("../../../tests/fixtures/metrics/vllm_v1_kv_cache_usage.txt");
const SGLANG: &str = include_str!("../../../tests/fixtures/metrics/sglang_llama31_8b.txt");
const TGI: &str = include_str!("../../../tests/fixtures/metrics/tgi_router.txt");
const TRITON: &str = include_str!("../../../tests/fixtures/metrics/triton_python_backend.txt");
const TRITON_TRTLLM: &str = include_str!("../../../tests/fixtures/metrics/triton_trtllm.txt");
const LLAMACPP_IDLE: &str =
    include_str!("../../../tests/fixtures/metrics/llamacpp_idle_windows.txt");
const LLAMACPP_BUSY: &str = include_str!("../../../tests/fixtures/metrics/llamacpp_busy.txt");
const LLAMACPP_B11434: &str = include_str!("../../../tests/fixtures/metrics/llamacpp_b11434.txt");

pub(super) const FIXTURES: &[&str] = &[
    VLLM_QWEN3,
    VLLM_DP2,
    VLLM_KV,
    SGLANG,
    TGI,
    TRITON,
    TRITON_TRTLLM,
    LLAMACPP_IDLE,
    LLAMACPP_BUSY,
    LLAMACPP_B11434,
];

fn first(preset: &str, body: &str) -> ServingSignals {
    Scraper::new(preset, DEFAULT_WINDOW)
        .unwrap()
        .observe(body, Instant::now())
        .unwrap()
}

fn gauges(s: &ServingSignals) -> (f64, f64, Option<f64>) {
    (s.waiting, s.running, s.kv_cache_usage)
}

#[test]
fn vllm_reads_the_older_gpu_cache_name() {
    let s = first("vllm", VLLM_QWEN3);
    assert_eq!(gauges(&s), (0.0, 0.0, Some(0.0)));
    assert!(s.fresh);
    assert_eq!(s.p95_latency_s, None, "one scrape has no window");
    assert_eq!(s.requests_per_s, 0.0);
}

#[test]
fn vllm_sums_data_parallel_engines() {
    assert_eq!(gauges(&first("vllm", VLLM_DP2)), (1.0, 3.0, None));
}

#[test]
fn vllm_reads_kv_cache_usage_perc() {
    assert_eq!(gauges(&first("vllm", VLLM_KV)), (0.0, 0.0, Some(0.0)));
}

#[test]
fn sglang_reads_queue_running_and_token_usage() {
    assert_eq!(
        gauges(&first("sglang", SGLANG)),
        (2826.0, 162.0, Some(0.28))
    );
}

#[test]
fn tgi_reads_queue_and_batch_and_has_no_kv_gauge() {
    assert_eq!(gauges(&first("tgi", TGI)), (4.0, 7.0, None));
}

#[test]
fn triton_reads_pending_requests() {
    assert_eq!(gauges(&first("triton", TRITON)), (0.0, 0.0, None));
}

#[test]
fn triton_reads_the_tensorrt_llm_batch_and_kv_blocks() {
    let (waiting, running, kv) = gauges(&first("triton", TRITON_TRTLLM));
    assert_eq!((waiting, running), (0.0, 1.0));
    assert!((kv.unwrap() - 1.0 / 6239.0).abs() < 1e-12);
}

#[test]
fn llamacpp_reads_deferred_and_processing() {
    assert_eq!(
        gauges(&first("llamacpp", LLAMACPP_BUSY)),
        (1.0, 2.0, None),
        "the KV gauge of old builds is no longer read: today's builds have none"
    );
}

#[test]
fn llamacpp_windows_nan_line_is_skipped_and_the_rest_kept() {
    let mut scraper = Scraper::new("llamacpp", DEFAULT_WINDOW).unwrap();
    let s = scraper.observe(LLAMACPP_IDLE, Instant::now()).unwrap();
    assert_eq!(gauges(&s), (0.0, 0.0, None));
    let (skipped, errors) = scraper.skipped_lines();
    assert_eq!(skipped, 1);
    assert_eq!(errors[0].line, 18);
    assert!(errors[0].reason.contains("-nan(ind)"), "{}", errors[0]);
}

#[test]
fn generic_matches_names_by_suffix_and_sums_them() {
    let body = "\
# TYPE myserver_requests_waiting gauge
myserver_requests_waiting 3
myserver:requests_running{worker=\"a\"} 1
myserver:requests_running{worker=\"b\"} 2
unrelated_requests_waitingroom 99
engine_kv_cache_usage_ratio 0.5
";
    assert_eq!(gauges(&first("generic", body)), (3.0, 3.0, Some(0.5)));
}

#[test]
fn generic_finds_a_latency_histogram_by_convention() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("generic", DEFAULT_WINDOW).unwrap();
    let body = |fast: u32, all: u32| {
        format!(
            "srv_requests_in_flight 1\n\
             srv_request_duration_seconds_bucket{{le=\"0.1\"}} {fast}\n\
             srv_request_duration_seconds_bucket{{le=\"1\"}} {all}\n\
             srv_request_duration_seconds_bucket{{le=\"+Inf\"}} {all}\n\
             srv_requests_total {all}\n"
        )
    };
    scraper.observe(&body(0, 0), t0).unwrap();
    let s = scraper
        .observe(&body(0, 20), t0 + Duration::from_secs(10))
        .unwrap();
    // All 20 in (0.1, 1]: rank 19 of 20.
    assert!((s.p95_latency_s.unwrap() - (0.1 + 0.9 * 19.0 / 20.0)).abs() < 1e-9);
    assert_eq!(s.requests_per_s, 2.0);
}

#[test]
fn unknown_preset_lists_the_allowed_ones() {
    let err = Scraper::new("ollama", DEFAULT_WINDOW).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("`ollama`"), "{message}");
    assert!(
        message.contains("vllm, tgi, triton, sglang, llamacpp, generic"),
        "{message}"
    );
    assert!(matches!(
        Scraper::new("vllm", Duration::ZERO),
        Err(ScrapeError::ZeroWindow)
    ));
}

#[test]
fn a_scrape_without_the_presets_metrics_says_what_was_looked_for() {
    let mut scraper = Scraper::new("vllm", DEFAULT_WINDOW).unwrap();
    let err = scraper.observe(SGLANG, Instant::now()).unwrap_err();
    assert!(matches!(
        err,
        ScrapeError::NoPresetMetrics { preset: "vllm", .. }
    ));
    assert!(err.to_string().contains("vllm:num_requests_waiting"));
}

#[test]
fn a_non_metrics_body_is_a_parse_error() {
    let mut scraper = Scraper::new("vllm", DEFAULT_WINDOW).unwrap();
    let err = scraper
        .observe("<html><body>Not Found</body></html>\n", Instant::now())
        .unwrap_err();
    assert!(matches!(err, ScrapeError::Parse(_)), "{err}");
}

#[test]
fn no_requests_in_the_window_means_no_latency() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("vllm", DEFAULT_WINDOW).unwrap();
    scraper.observe(VLLM_QWEN3, t0).unwrap();
    let s = scraper
        .observe(VLLM_QWEN3, t0 + Duration::from_secs(5))
        .unwrap();
    assert_eq!(s.p95_latency_s, None);
    assert_eq!(s.requests_per_s, 0.0);
}

/// A vLLM scrape with `n_fast` requests ≤ 1 s and `n_slow` in (1, 5] s.
fn vllm_body(n_fast: u32, n_slow: u32) -> String {
    let all = n_fast + n_slow;
    format!(
        "vllm:num_requests_waiting{{model_name=\"m\"}} 0\n\
         vllm:num_requests_running{{model_name=\"m\"}} 1\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"1.0\",model_name=\"m\"}} {n_fast}\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"5.0\",model_name=\"m\"}} {all}\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"+Inf\",model_name=\"m\"}} {all}\n\
         vllm:e2e_request_latency_seconds_count{{model_name=\"m\"}} {all}\n\
         vllm:request_success_total{{finished_reason=\"stop\",model_name=\"m\"}} {all}\n"
    )
}

#[test]
fn p95_and_rate_cover_only_the_last_window() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("vllm", Duration::from_secs(30)).unwrap();
    // A long history of slow requests...
    scraper.observe(&vllm_body(0, 1000), t0).unwrap();
    // ...then 40 fast requests in each of the next two 30 s windows.
    scraper
        .observe(&vllm_body(40, 1000), t0 + Duration::from_secs(30))
        .unwrap();
    let s = scraper
        .observe(&vllm_body(80, 1000), t0 + Duration::from_secs(60))
        .unwrap();
    // Only the last 30 s count: all 40 ≤ 1 s, rank 38 of 40.
    assert!((s.p95_latency_s.unwrap() - 0.95).abs() < 1e-9);
    assert!((s.requests_per_s - 40.0 / 30.0).abs() < 1e-9);
}

#[test]
fn a_restarted_server_counts_its_new_requests_as_the_delta() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("vllm", DEFAULT_WINDOW).unwrap();
    scraper.observe(&vllm_body(500, 500), t0).unwrap();
    // The server restarted: its counters start again, lower than before.
    let s = scraper
        .observe(&vllm_body(0, 10), t0 + Duration::from_secs(10))
        .unwrap();
    assert!((s.p95_latency_s.unwrap() - (1.0 + 4.0 * 9.5 / 10.0)).abs() < 1e-9);
    assert_eq!(s.requests_per_s, 1.0);
}

#[test]
fn tgi_latency_from_its_real_bucket_layout() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("tgi", DEFAULT_WINDOW).unwrap();
    // Just started: gauges only, histogram and counter not created yet.
    scraper
        .observe("tgi_queue_size 0\ntgi_batch_current_size 0\n", t0)
        .unwrap();
    let s = scraper.observe(TGI, t0 + Duration::from_secs(30)).unwrap();
    // 110 requests ≤ 3.1 s, the last 10 at 7 s: rank 114 falls 4/10 into the
    // bucket (5.68, 8.52].
    assert!((s.p95_latency_s.unwrap() - 6.817815439391433).abs() < 1e-9);
    assert_eq!(s.requests_per_s, 4.0);
}

fn triton_body(success: u64, request_us: u64, queue_us: u64, pending: u64) -> String {
    format!(
        "nv_inference_request_success{{model=\"a\",version=\"1\"}} {success}\n\
         nv_inference_request_failure{{model=\"a\",reason=\"BACKEND\",version=\"1\"}} 0\n\
         nv_inference_request_duration_us{{model=\"a\",version=\"1\"}} {request_us}\n\
         nv_inference_queue_duration_us{{model=\"a\",version=\"1\"}} {queue_us}\n\
         nv_inference_pending_request_count{{model=\"a\",version=\"1\"}} {pending}\n"
    )
}

#[test]
fn triton_latency_and_running_come_from_counter_deltas() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("triton", DEFAULT_WINDOW).unwrap();
    scraper
        .observe(&triton_body(100, 1_000_000, 0, 0), t0)
        .unwrap();
    // 50 requests in 10 s, 200 ms each, of which 50 ms queued.
    let s = scraper
        .observe(
            &triton_body(150, 11_000_000, 2_500_000, 3),
            t0 + Duration::from_secs(10),
        )
        .unwrap();
    assert!((s.p95_latency_s.unwrap() - 0.2).abs() < 1e-9);
    assert!((s.running - 0.75).abs() < 1e-9, "{}", s.running);
    assert_eq!(s.waiting, 3.0);
    assert_eq!(s.requests_per_s, 5.0);
}

#[test]
fn triton_after_a_restart_uses_the_new_counters() {
    let t0 = Instant::now();
    let mut scraper = Scraper::new("triton", DEFAULT_WINDOW).unwrap();
    scraper.observe(TRITON, t0).unwrap();
    // The same server restarted: 2 requests again, 43717 µs in total.
    let restarted = TRITON.replace("} 45735", "} 43717");
    let restarted = restarted.replace(
        "nv_inference_request_success{model=\"vastpipe_passthrough\",version=\"1\"} 2",
        "nv_inference_request_success{model=\"vastpipe_passthrough\",version=\"1\"} 1",
    );
    let s = scraper
        .observe(&restarted, t0 + Duration::from_secs(1))
        .unwrap();
    assert!((s.p95_latency_s.unwrap() - 0.043717).abs() < 1e-12);
}

#[test]
fn a_failed_scrape_reports_the_last_signals_as_stale_with_the_reason() {
    let mut scraper = Scraper::new("llamacpp", DEFAULT_WINDOW).unwrap();
    let error = ScrapeError::Status {
        url: "http://127.0.0.1:1/metrics".into(),
        status: 503,
    };
    let never = scraper.failed(&error);
    assert!(!never.fresh);
    assert_eq!(never.scrape_error.as_deref(), Some("HTTP 503"));
    assert!(scraper.failing());
    scraper.observe(LLAMACPP_BUSY, Instant::now()).unwrap();
    assert!(!scraper.failing());
    let stale = scraper.failed(&error);
    assert!(!stale.fresh);
    assert_eq!(gauges(&stale), (1.0, 2.0, None));
    assert_eq!(stale.scrape_errors, 2);
}

#[test]
fn llamacpp_without_metrics_is_told_to_start_with_the_flag() {
    let scraper = Scraper::new("llamacpp", DEFAULT_WINDOW).unwrap();
    let e = scraper.explain_fetch_error(ScrapeError::Status {
        url: "http://127.0.0.1:1/metrics".into(),
        status: 501,
    });
    assert_eq!(e.reason(), "HTTP 501, start the engine with --metrics");
    assert!(e.to_string().contains("http://127.0.0.1:1/metrics"), "{e}");
}

#[test]
fn llamacpp_of_today_has_no_kv_gauge_and_counts_its_tokens() {
    let s = first("llamacpp", LLAMACPP_B11434);
    assert_eq!(gauges(&s), (0.0, 0.0, None));
    assert_eq!(s.requests_per_s, 0.0);
    assert_eq!(s.p95_latency_s, None);
}

/// A llama.cpp scrape after `tokens` generated tokens, nothing in flight.
fn llamacpp_body(tokens: u64) -> String {
    LLAMACPP_B11434
        .replace(
            "llamacpp:tokens_predicted_total 8",
            &format!("llamacpp:tokens_predicted_total {tokens}"),
        )
        .replace(
            "llamacpp:n_decode_total 8",
            &format!("llamacpp:n_decode_total {tokens}"),
        )
}

#[test]
fn a_request_between_two_scrapes_moves_the_activity_total() {
    // The gauges read 0 in every scrape: the request started and ended
    // between them. Only the counters tell.
    let mut scraper = Scraper::new("llamacpp", DEFAULT_WINDOW).unwrap();
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let a = scraper.observe(&llamacpp_body(8), at(0)).unwrap();
    let b = scraper.observe(&llamacpp_body(8), at(500)).unwrap();
    assert_eq!(a.ongoing() + b.ongoing(), 0.0);
    assert_eq!(a.activity_total, b.activity_total, "nothing happened");
    let c = scraper.observe(&llamacpp_body(12), at(1000)).unwrap();
    assert_eq!(c.ongoing(), 0.0);
    assert!(c.activity_total > b.activity_total, "{c:?}");
    // The engine restarted: its counters start again from 0, and what it
    // did since still counts as work, never as a step back.
    let d = scraper.observe(&llamacpp_body(3), at(1500)).unwrap();
    assert!(d.activity_total > c.activity_total, "{d:?}");
    let e = scraper.observe(&llamacpp_body(3), at(2000)).unwrap();
    assert_eq!(e.activity_total, d.activity_total);
}

#[test]
fn every_preset_but_generic_reads_a_counter_that_moves_with_requests() {
    for (preset, body) in [
        ("vllm", VLLM_QWEN3),
        ("tgi", TGI),
        ("triton", TRITON),
        ("sglang", SGLANG),
        ("llamacpp", LLAMACPP_B11434),
    ] {
        let exposition = prom::parse(body).unwrap();
        let reading = preset::Engine::from_name(preset).unwrap().read(&exposition);
        assert!(
            reading.completed.is_some() || reading.work.is_some(),
            "{preset}: {reading:?}"
        );
    }
}

#[test]
fn negative_or_infinite_gauges_do_not_reach_the_autoscaler() {
    let s = first(
        "vllm",
        "vllm:num_requests_waiting -3\nvllm:num_requests_running +Inf\nvllm:kv_cache_usage_perc NaN\n",
    );
    assert_eq!(gauges(&s), (0.0, 0.0, None));
}

mod fetch {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Serves `response` (a raw HTTP response) to every connection on a free
    /// loopback port; returns the metrics URL.
    async fn serve(response: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
                    let _ = conn.write_all(response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        format!("http://{addr}/metrics")
    }

    #[tokio::test]
    async fn fetches_a_metrics_body() {
        let url = serve(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 29\r\nconnection: close\r\n\r\nvllm:num_requests_waiting 2\r\n").await;
        let body = fetch(&reqwest::Client::new(), &url, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(first("vllm", &body).waiting, 2.0);
    }

    #[tokio::test]
    async fn an_error_status_is_reported_with_the_url() {
        let url = serve(
            b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let err = fetch(&reqwest::Client::new(), &url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ScrapeError::Status { status: 501, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&url));
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit_by_length_and_by_stream() {
        let declared = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\nconnection: close\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123").await;
        let err = fetch_limited(
            &reqwest::Client::new(),
            &declared,
            Duration::from_secs(5),
            16,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ScrapeError::BodyTooLarge { limit: 16, .. }),
            "{err}"
        );
        let streamed = serve(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789012345678901234567890123456789",
        )
        .await;
        let err = fetch_limited(
            &reqwest::Client::new(),
            &streamed,
            Duration::from_secs(5),
            16,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ScrapeError::BodyTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn gives_up_on_a_server_that_never_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        let err = fetch(&reqwest::Client::new(), &url, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_request_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        let err = fetch(&reqwest::Client::new(), &url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ScrapeError::Request { .. }), "{err}");
    }
}

#[test]
fn triton_prefers_its_own_p95_summary_when_requests_finished() {
    let t0 = Instant::now();
    let summary = |p95_us: u64| {
        format!(
            "nv_inference_request_summary_us{{model=\"a\",quantile=\"0.5\",version=\"1\"}} 1000\n\
             nv_inference_request_summary_us{{model=\"a\",quantile=\"0.95\",version=\"1\"}} {p95_us}\n\
             nv_inference_request_summary_us{{model=\"b\",quantile=\"0.95\",version=\"1\"}} 2000\n"
        )
    };
    let mut scraper = Scraper::new("triton", DEFAULT_WINDOW).unwrap();
    let idle = triton_body(10, 1_000_000, 0, 0) + &summary(900_000);
    scraper.observe(&idle, t0).unwrap();
    let s = scraper.observe(&idle, t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(s.p95_latency_s, None, "nothing finished in the window");
    let busy = triton_body(20, 2_000_000, 0, 0) + &summary(900_000);
    let s = scraper.observe(&busy, t0 + Duration::from_secs(2)).unwrap();
    // The slowest model's p95, not the mean of 100 ms the counters give.
    assert_eq!(s.p95_latency_s, Some(0.9));
}
