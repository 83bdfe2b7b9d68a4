//! Tests of the demo model server over real HTTP on loopback; the helpers
//! here also start servers for the load generator's tests.

use super::*;
use clap::Parser;
use serde_json::Value;
use tokio::task::JoinHandle;

/// A demo model server on 127.0.0.1 with a small weights file of its own.
pub(crate) struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _weights_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server for `tiny-model.bin`; `configure` adjusts its config.
    pub async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("tiny-model.bin");
        std::fs::write(&weights, vec![1u8; 64 << 10]).unwrap();
        let mut cfg = ServerConfig::new(weights).unwrap();
        configure(&mut cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, cfg, async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            task,
            _weights_dir: dir,
        }
    }

    /// Starts a server and waits until its /health answers 200.
    pub async fn start_ready(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let server = Self::start(configure).await;
        server.wait_ready().await;
        server
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = client.get(format!("{}/health", self.base)).send().await;
            if status.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks the server to stop and returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic")
    }
}

async fn complete(client: &reqwest::Client, base: &str, body: Value) -> (StatusCode, Value) {
    let resp = client
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    resp.text().await.unwrap()
}

/// The value of the one sample line that starts with `series{`.
fn sample(text: &str, series_with_labels: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series_with_labels))
        .unwrap_or_else(|| panic!("no {series_with_labels} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn health_is_503_until_the_weights_are_loaded_then_200() {
    let server = TestServer::start(|c| {
        c.init_time = Duration::from_millis(400);
        c.token_time = Duration::from_millis(1);
    })
    .await;
    let client = reqwest::Client::new();
    let health = client.get(format!("{}/health", server.base)).send().await;
    assert_eq!(health.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = complete(&client, &server.base, json!({"prompt": "hi"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["object"], "error");

    server.wait_ready().await;
    let (status, body) = complete(
        &client,
        &server.base,
        json!({"prompt": "warm weights please", "max_tokens": 3, "model": "tiny-model"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "tiny-model");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 3, "{text:?}");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_use_vllm_names_and_a_consistent_histogram() {
    let server = TestServer::start_ready(|c| {
        c.token_time = Duration::from_millis(1);
        c.model_name = "demo \"7b\"".into();
    })
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let (status, _) = complete(
            &client,
            &server.base,
            json!({"prompt": "x", "max_tokens": 2}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = metrics_text(&client, &server.base).await;
    let labels = r#"model_name="demo \"7b\"""#;
    for (name, kind) in [
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:num_requests_running", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:request_success_total", "counter"),
        ("vllm:e2e_request_latency_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_waiting{{{labels}}}")),
        0.0
    );
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_running{{{labels}}}")),
        0.0
    );
    assert_eq!(
        sample(&text, &format!("vllm:kv_cache_usage_perc{{{labels}}}")),
        0.0
    );
    let success = format!("vllm:request_success_total{{finished_reason=\"length\",{labels}}}");
    assert_eq!(sample(&text, &success), 3.0);

    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("vllm:e2e_request_latency_seconds_bucket{le=\""))
        .map(|l| {
            assert!(l.contains(labels), "{l}");
            let le = l.split('"').nth(1).unwrap().to_string();
            (le, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(
        buckets.len(),
        crate::demo::latency::VLLM_E2E_LATENCY_BUCKETS.len() + 1
    );
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let (le, inf) = buckets.last().unwrap();
    assert_eq!(le, "+Inf");
    let count = sample(
        &text,
        &format!("vllm:e2e_request_latency_seconds_count{{{labels}}}"),
    );
    assert_eq!((*inf, count), (3.0, 3.0));
    assert_eq!(
        buckets[0],
        ("0.3".to_string(), 3.0),
        "2 ms requests are under 0.3 s"
    );
    assert!(
        sample(
            &text,
            &format!("vllm:e2e_request_latency_seconds_sum{{{labels}}}")
        ) > 0.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn requests_queue_behind_the_concurrency_limit() {
    let server = TestServer::start_ready(|c| {
        c.concurrency = NonZeroUsize::new(2).unwrap();
        c.token_time = Duration::from_millis(10);
    })
    .await;
    let client = reqwest::Client::new();
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (client, base) = (client.clone(), server.base.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let (status, _) =
                    complete(&client, &base, json!({"prompt": "q", "max_tokens": 5})).await;
                assert_eq!(status, StatusCode::OK);
                sent.elapsed()
            })
        })
        .collect();

    let mut most_waiting = 0.0f64;
    let mut most_running = 0.0f64;
    while !burst.iter().all(|t| t.is_finished()) {
        let text = metrics_text(&client, &server.base).await;
        let labels = "{model_name=\"tiny-model\"}";
        most_waiting =
            most_waiting.max(sample(&text, &format!("vllm:num_requests_waiting{labels}")));
        most_running =
            most_running.max(sample(&text, &format!("vllm:num_requests_running{labels}")));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most_waiting > 0.0, "nobody ever waited");
    assert_eq!(most_running, 2.0, "never more than --concurrency at once");

    let mut latencies = Vec::new();
    for t in burst {
        latencies.push(t.await.unwrap());
    }
    latencies.sort();
    // Two at a time, 50 ms each: the i-th to finish waited for i/2 pairs before it.
    for (i, latency) in latencies.iter().enumerate() {
        let floor = Duration::from_millis(50 * (i as u64 / 2 + 1));
        assert!(
            *latency >= floor,
            "request {i} took {latency:?}, less than {floor:?}"
        );
    }
    assert!(latencies[7] < Duration::from_secs(1), "{latencies:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_openai_style_errors() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_millis(1)).await;
    let client = reqwest::Client::new();
    let base = &server.base;

    let (status, body) = complete(&client, base, json!({"prompt": "x", "max_tokens": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("allowed: 1 to 8192"),
        "{body}"
    );

    let (status, body) = complete(&client, base, json!({"prompt": "x", "model": "other"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("`tiny-model`"),
        "{body}"
    );

    let (status, body) = complete(&client, base, json!({"max_tokens": 2})).await;
    assert_eq!(
        (status, &body["object"]),
        (StatusCode::BAD_REQUEST, &json!("error"))
    );

    let (status, body) = complete(
        &client,
        base,
        json!({"prompt": ["a b", "c"], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    // A prompt past axum's 2 MB default, within a gateway's 4 MiB.
    let long = "a ".repeat(3 << 19);
    let (status, body) = complete(&client, base, json!({"prompt": long, "max_tokens": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops_listening() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let in_flight = {
        let (client, base) = (client.clone(), server.base.clone());
        tokio::spawn(async move {
            complete(&client, &base, json!({"prompt": "x", "max_tokens": 3})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(80)).await;
    let addr = server.addr;
    server.stop().await.unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_that_outlast_the_drain_timeout() {
    let server = TestServer::start_ready(|c| {
        c.token_time = Duration::from_secs(30);
        c.drain_timeout = Duration::from_millis(100);
    })
    .await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let _stuck = tokio::spawn(async move {
        complete(&client, &base, json!({"prompt": "x", "max_tokens": 1})).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = Instant::now();
    server.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn unreadable_weights_stop_the_server_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = ServerConfig::new("/nonexistent/gpufleet/llama.bin".into()).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        serve(listener, cfg, std::future::pending()),
    )
    .await
    .expect("a server that cannot load stops");
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("/nonexistent/gpufleet/llama.bin"), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

#[test]
fn command_line_defaults_are_the_documented_ones() {
    let cli = Cli::try_parse_from([
        "demo-server",
        "--port",
        "20001",
        "--weights",
        "/m/llama-3-8b.safetensors",
    ])
    .unwrap();
    let cfg = ServerConfig::from_args(&cli.server).unwrap();
    assert_eq!(cli.server.host, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(
        (
            cfg.concurrency.get(),
            cfg.token_time,
            cfg.default_tokens.get(),
            cfg.init_time
        ),
        (4, Duration::from_millis(20), 32, Duration::ZERO)
    );
    assert_eq!(cfg.model_name, "llama-3-8b");

    let cli = Cli::try_parse_from([
        "demo-server",
        "--port",
        "1",
        "--weights",
        "/m/x",
        "--concurrency",
        "2",
        "--token-time",
        "5ms",
        "--tokens",
        "7",
        "--model-name",
        "chat",
    ])
    .unwrap();
    let cfg = ServerConfig::from_args(&cli.server).unwrap();
    assert_eq!(
        (
            cfg.concurrency.get(),
            cfg.token_time,
            cfg.default_tokens.get()
        ),
        (2, Duration::from_millis(5), 7)
    );
    assert_eq!(cfg.model_name, "chat");
    assert!(Cli::try_parse_from([
        "demo-server",
        "--port",
        "1",
        "--weights",
        "/m/x",
        "--concurrency",
        "0"
    ])
    .is_err());
    assert!(matches!(
        ServerConfig::new("/".into()),
        Err(ServerError::NoModelName { .. })
    ));
}

#[tokio::test]
async fn stream_true_sends_one_event_per_token_then_done() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_millis(1)).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/completions", server.base))
        .json(&serde_json::json!({"prompt": "hi", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    assert_eq!(events[3], "data: [DONE]");
    let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["choices"][0]["text"], " the");
    // The slot came back: the gauges are at rest.
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vllm:num_requests_running{model_name=\"tiny-model\"} 0.0"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn chat_completions_answer_in_the_chat_shape() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_millis(1)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let resp = client
        .post(&url)
        .json(&json!({
            "model": "tiny-model",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
            ],
            "max_completion_tokens": 3,
            "temperature": 0.2,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], " the fleet keeps");
    assert_eq!(body["usage"]["prompt_tokens"], 4, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    // Streamed: the role in the first delta, a usage chunk when asked.
    let text = client
        .post(&url)
        .json(&json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[1]["choices"][0]["delta"]["content"], " fleet");
    assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[2]["choices"], json!([]));
    assert_eq!(events[2]["usage"]["total_tokens"], 3, "{text}");

    // A chat request without messages, and a completion without a prompt.
    let resp = client
        .post(&url)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("`messages`"),
        "{body}"
    );
    let (status, body) = complete(&client, &server.base, json!({"max_tokens": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("`prompt`"),
        "{body}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_token_limit_is_named_as_the_client_sent_it() {
    let server = TestServer::start_ready(|c| c.token_time = Duration::from_millis(1)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let cases = [
        (
            json!({"max_completion_tokens": 0}),
            "max_completion_tokens is 0;",
        ),
        (json!({"max_tokens": 9000}), "max_tokens is 9000;"),
        // The newer name wins when both are sent, so it is the one named.
        (
            json!({"max_completion_tokens": 9000, "max_tokens": 5}),
            "max_completion_tokens is 9000;",
        ),
    ];
    for (limit, named) in cases {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(limit.as_object().unwrap().clone());
        let resp = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = resp.json().await.unwrap();
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.starts_with(named) && message.ends_with("allowed: 1 to 8192"),
            "{body} → {message}"
        );
    }
    server.stop().await.unwrap();
}
