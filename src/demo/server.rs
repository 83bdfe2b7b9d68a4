//! Demo model server: behaves like an inference engine to everything around it
//! (weights read at start, /health, an OpenAI-like completions API with a
//! concurrency limit and a real queue, vLLM's Prometheus metrics), minus the GPU.

use crate::demo::latency::LatencyHistogram;
use crate::demo::weights::{read_weights, WeightsError};
use anyhow::Context as _;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::fmt::Write as _;
use std::future::{Future, IntoFuture as _};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

const DEFAULT_CONCURRENCY: NonZeroUsize = NonZeroUsize::new(4).unwrap(); // evaluated at compile time
const DEFAULT_TOKENS: NonZeroU32 = NonZeroU32::new(32).unwrap(); // evaluated at compile time
const DEFAULT_TOKEN_TIME: Duration = Duration::from_millis(20);

/// Longer generations are refused, as an engine refuses more than its context.
pub const MAX_TOKENS_LIMIT: u32 = 8192;

/// How long a stopping server lets in-flight requests finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Weights file (or directory) read fully at start, like an engine loading a model.
    #[arg(long)]
    pub weights: PathBuf,
    /// Requests served at once; the rest wait in the queue. Also spelled as
    /// vLLM's `--max-num-seqs`.
    #[arg(long, alias = "max-num-seqs", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: NonZeroUsize,
    /// Time to generate one token.
    #[arg(long, default_value_t = DEFAULT_TOKEN_TIME.into())]
    pub token_time: humantime::Duration,
    /// Tokens generated when a request gives no max_tokens.
    #[arg(long, default_value_t = DEFAULT_TOKENS)]
    pub tokens: NonZeroU32,
    /// Time spent after reading the weights before serving, as an engine
    /// spends on CUDA-graph capture and KV-cache profiling.
    #[arg(long, default_value = "0s")]
    pub init_time: humantime::Duration,
    /// Model name in responses and metrics [default: the weights file's
    /// stem]; also spelled as vLLM's `--served-model-name`.
    #[arg(long, alias = "served-model-name")]
    pub model_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot name the model after weights {weights}: it has no file name; pass --model-name"
    )]
    NoModelName { weights: PathBuf },
    #[error("cannot listen on {addr}: {source}; choose a free port with --port")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub weights: PathBuf,
    pub model_name: String,
    pub concurrency: NonZeroUsize,
    pub token_time: Duration,
    pub default_tokens: NonZeroU32,
    pub init_time: Duration,
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// The defaults of `gpufleet demo server` for these weights.
    pub fn new(weights: PathBuf) -> Result<Self, ServerError> {
        let model_name = weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ServerError::NoModelName {
                weights: weights.clone(),
            })?;
        Ok(Self {
            weights,
            model_name,
            concurrency: DEFAULT_CONCURRENCY,
            token_time: DEFAULT_TOKEN_TIME,
            default_tokens: DEFAULT_TOKENS,
            init_time: Duration::ZERO,
            drain_timeout: DRAIN_TIMEOUT,
        })
    }

    pub fn from_args(args: &ServerArgs) -> Result<Self, ServerError> {
        let mut cfg = Self::new(args.weights.clone())?;
        if let Some(name) = &args.model_name {
            cfg.model_name.clone_from(name);
        }
        cfg.concurrency = args.concurrency;
        cfg.token_time = args.token_time.into();
        cfg.default_tokens = args.tokens;
        cfg.init_time = args.init_time.into();
        Ok(cfg)
    }
}

/// Binds `--host:--port`, serves until SIGTERM or SIGINT, then drains.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let cfg = ServerConfig::from_args(&args)?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    };
    serve(listener, cfg, stop).await
}

/// Serves on `listener` until `shutdown` completes, then stops accepting and
/// lets in-flight requests finish (at most `cfg.drain_timeout`). Fails if the
/// weights cannot be read, as an engine that cannot load its model exits.
pub async fn serve(
    listener: TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(
        addr = %local, model = %cfg.model_name, weights = %cfg.weights.display(),
        concurrency = cfg.concurrency.get(), "demo model server listening; loading weights"
    );
    let engine = Arc::new(Engine::new(cfg));
    let cancel_load = Arc::new(AtomicBool::new(false));
    let mut loading = Box::pin(load(engine.clone(), cancel_load.clone()));
    let mut loaded = false;

    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    use axum::serve::ListenerExt;
    // Token streams are many small writes: each goes out at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut server = Box::pin(
        axum::serve(listener, router(engine.clone()))
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = drain_tx.send(());
            })
            .into_future(),
    );
    let drain_timeout = engine.cfg.drain_timeout;
    let mut drain_deadline = Box::pin(async move {
        match drain_rx.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            // The server ended without a shutdown request: the other arm wins.
            Err(_) => std::future::pending().await,
        }
    });

    let outcome = loop {
        tokio::select! {
            served = &mut server => break served.context("serving HTTP"),
            _ = &mut drain_deadline => {
                tracing::warn!(
                    waiting = engine.waiting.load(Ordering::Relaxed),
                    running = engine.running.load(Ordering::Relaxed),
                    "requests still in flight after {drain_timeout:?}; stopping anyway"
                );
                break Ok(());
            }
            result = &mut loading, if !loaded => match result {
                Ok(()) => loaded = true,
                Err(e) => break Err(e),
            },
        }
    };
    cancel_load.store(true, Ordering::Relaxed);
    if outcome.is_ok() {
        tracing::info!("demo model server stopped");
    }
    outcome
}

/// Reads the weights on a blocking thread, waits out the init time, then
/// opens the server for requests.
async fn load(engine: Arc<Engine>, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    let path = engine.cfg.weights.clone();
    let read = tokio::task::spawn_blocking(move || read_weights(&path, &cancel))
        .await
        .context("the weights loader thread panicked")?
        .map_err(ServerError::from)?;
    tracing::info!(
        files = read.files,
        bytes = read.bytes,
        "read weights in {:.3} s ({:.1} MiB/s)",
        read.elapsed.as_secs_f64(),
        read.bytes_per_s() / f64::from(1 << 20)
    );
    tokio::time::sleep(engine.cfg.init_time).await;
    engine.ready.store(true, Ordering::Release);
    tracing::info!("ready");
    Ok(())
}

/// The serving state every handler sees. Gauges are atomics; the finished
/// requests' histogram sits behind a mutex held only for an update or a render.
struct Engine {
    cfg: ServerConfig,
    ready: AtomicBool,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    finished: Mutex<LatencyHistogram>,
    next_id: AtomicU64,
}

impl Engine {
    fn new(cfg: ServerConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cfg.concurrency.get())),
            cfg,
            ready: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            finished: Mutex::new(LatencyHistogram::vllm_e2e()),
            next_id: AtomicU64::new(0),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Counts a request in a gauge for as long as it lives, so a client that hangs
/// up mid-request (its handler future dropped) leaves the gauge right.
struct InGauge<'a>(&'a AtomicUsize);

impl<'a> InGauge<'a> {
    fn enter(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for InGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest request body the demo server reads: axum's default (2 MB) is
/// below what a gateway passes by default (`max_body`, 4 MiB), and long
/// prompts are what engines are for.
const MAX_REQUEST_BODY: usize = 64 << 20;

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(engine)
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    if engine.is_ready() {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading weights\n").into_response()
    }
}

/// A completion or chat completion request: the fields the demo reads;
/// the rest (temperature, stop, …) are accepted and ignored, as an engine
/// that samples at random would.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    /// `/v1/completions`.
    #[serde(default)]
    prompt: Option<Prompt>,
    /// `/v1/chat/completions`.
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    /// The chat API's newer name for `max_tokens`; it wins when both are set.
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    /// A string, or a list of parts of which the `text` ones count.
    #[serde(default)]
    content: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    /// A last chunk with the request's token counts, as OpenAI sends.
    #[serde(default)]
    include_usage: bool,
}

/// Which of the two OpenAI APIs a request came in on: the same generation,
/// shaped differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

impl Api {
    fn id(self, n: u64) -> String {
        match self {
            Api::Completions => format!("cmpl-{n:016x}"),
            Api::Chat => format!("chatcmpl-{n:016x}"),
        }
    }

    /// The whole answer's one choice.
    fn choice(self, text: String) -> serde_json::Value {
        match self {
            Api::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"})
            }
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": "length",
            }),
        }
    }

    /// The streamed choice of token `i`; the chat API names the role in the
    /// first delta.
    fn chunk_choice(self, i: u32, finish: serde_json::Value) -> serde_json::Value {
        let text = generated_text_at(i);
        match self {
            Api::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            Api::Chat if i == 0 => json!({
                "index": 0,
                "delta": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Api::Chat => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }

    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }
}

/// Whitespace-separated words stand in for tokens.
fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

impl ChatMessage {
    fn tokens(&self) -> usize {
        match &self.content {
            Some(serde_json::Value::String(s)) => words(s),
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                .map(words)
                .sum(),
            _ => 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

impl Prompt {
    fn tokens(&self) -> usize {
        match self {
            Prompt::One(p) => words(p),
            Prompt::Many(ps) => ps.iter().map(|p| words(p)).sum(),
        }
    }
}

/// An error body shaped like vLLM's OpenAI server's.
fn api_error(status: StatusCode, kind: &str, message: String) -> Response {
    let body =
        json!({"object": "error", "message": message, "type": kind, "code": status.as_u16()});
    (status, Json(body)).into_response()
}

async fn completions(
    State(engine): State<Arc<Engine>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    generate(engine, Api::Completions, body).await
}

async fn chat_completions(
    State(engine): State<Arc<Engine>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    generate(engine, Api::Chat, body).await
}

async fn generate(
    engine: Arc<Engine>,
    api: Api,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let arrived = Instant::now();
    if !engine.is_ready() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "the model is still loading its weights; retry when /health answers 200".into(),
        );
    }
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                rejection.body_text(),
            )
        }
    };
    let name = &engine.cfg.model_name;
    if let Some(asked) = req.model.as_deref().filter(|m| m != name) {
        return api_error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The model `{asked}` does not exist; this server serves `{name}`."),
        );
    }
    let prompt_tokens = match (api, &req.prompt, &req.messages) {
        (Api::Completions, Some(prompt), _) => prompt.tokens(),
        (Api::Chat, _, Some(messages)) if !messages.is_empty() => {
            messages.iter().map(ChatMessage::tokens).sum()
        }
        (Api::Completions, None, _) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "`prompt` is missing: a string or a list of strings".into(),
            )
        }
        (Api::Chat, _, _) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "`messages` is missing or empty: a list of {\"role\", \"content\"}".into(),
            )
        }
    };
    // The error names the field the client sent, so it can find what to fix.
    let (field, tokens) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(tokens), _) => ("max_completion_tokens", tokens),
        (None, Some(tokens)) => ("max_tokens", tokens),
        (None, None) => ("this server's --tokens", engine.cfg.default_tokens.get()),
    };
    if !(1..=MAX_TOKENS_LIMIT).contains(&tokens) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            format!("{field} is {tokens}; allowed: 1 to {MAX_TOKENS_LIMIT}"),
        );
    }

    let queued = InGauge::enter(&engine.waiting);
    // The semaphore is never closed, so acquiring only fails on a broken invariant.
    let Ok(slot) = engine.slots.clone().acquire_owned().await else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "the server is shutting down".into(),
        );
    };
    drop(queued);
    if req.stream {
        let usage = req
            .stream_options
            .is_some_and(|o| o.include_usage)
            .then_some(prompt_tokens);
        return stream_tokens(engine.clone(), api, slot, tokens, usage, arrived);
    }
    let _slot = slot;
    let generating = InGauge::enter(&engine.running);
    tokio::time::sleep(engine.cfg.token_time.saturating_mul(tokens)).await;
    drop(generating);

    engine
        .finished
        .lock()
        // A panic elsewhere cannot leave a histogram half-updated: use it as is.
        .unwrap_or_else(PoisonError::into_inner)
        .observe(arrived.elapsed().as_secs_f64());
    let id = engine.next_id.fetch_add(1, Ordering::Relaxed);
    let created = crate::domain::unix_ms_now() / 1000;
    Json(json!({
        "id": api.id(id),
        "object": api.object(false),
        "created": created,
        "model": name,
        "choices": [api.choice(generated_text(tokens))],
        "usage": usage(prompt_tokens, tokens),
    }))
    .into_response()
}

fn usage(prompt_tokens: usize, tokens: u32) -> serde_json::Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens as usize,
    })
}

/// `stream: true`: one server-sent event per token as it is generated
/// (OpenAI's `text_completion` or `chat.completion.chunk` chunks), with
/// `usage` (the prompt's token count) a last chunk of token counts, then
/// `data: [DONE]`. The slot is held until the last token; a client that
/// hangs up frees it.
fn stream_tokens(
    engine: Arc<Engine>,
    api: Api,
    slot: tokio::sync::OwnedSemaphorePermit,
    tokens: u32,
    usage: Option<usize>,
    arrived: Instant,
) -> Response {
    let id = engine.next_id.fetch_add(1, Ordering::Relaxed);
    let created = crate::domain::unix_ms_now() / 1000;
    engine.running.fetch_add(1, Ordering::Relaxed);
    struct Generation {
        engine: Arc<Engine>,
        _slot: tokio::sync::OwnedSemaphorePermit,
        next: u32,
    }
    impl Drop for Generation {
        fn drop(&mut self) {
            self.engine.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let state = Generation {
        engine,
        _slot: slot,
        next: 0,
    };
    let events = futures_util::stream::unfold(Some(state), move |state| async move {
        let mut g = state?;
        if g.next == tokens {
            g.engine
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(arrived.elapsed().as_secs_f64());
            let mut last = String::new();
            if let Some(prompt_tokens) = usage {
                let chunk = json!({
                    "id": api.id(id),
                    "object": api.object(true),
                    "created": created,
                    "model": g.engine.cfg.model_name,
                    "choices": [],
                    "usage": self::usage(prompt_tokens, tokens),
                });
                last = format!("data: {chunk}\n\n");
            }
            last.push_str("data: [DONE]\n\n");
            return Some((Ok::<_, std::convert::Infallible>(last), None));
        }
        tokio::time::sleep(g.engine.cfg.token_time).await;
        let finish = if g.next + 1 == tokens {
            json!("length")
        } else {
            json!(null)
        };
        let chunk = json!({
            "id": api.id(id),
            "object": api.object(true),
            "created": created,
            "model": g.engine.cfg.model_name,
            "choices": [api.chunk_choice(g.next, finish)],
        });
        g.next += 1;
        Some((Ok(format!("data: {chunk}\n\n")), Some(g)))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}

const WORDS: [&str; 8] = [
    " the", " fleet", " keeps", " weights", " warm", " on", " every", " host",
];

/// The `i`th generated token.
fn generated_text_at(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

fn generated_text(tokens: u32) -> String {
    (0..tokens).map(generated_text_at).collect()
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let body = render_metrics(&engine);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn render_metrics(engine: &Engine) -> String {
    let labels = format!("model_name=\"{}\"", escape_label(&engine.cfg.model_name));
    let waiting = engine.waiting.load(Ordering::Relaxed);
    let running = engine.running.load(Ordering::Relaxed);
    let kv_usage = running as f64 / engine.cfg.concurrency.get() as f64;
    let finished = engine
        .finished
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();

    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value:?}\n"
        );
    };
    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        running as f64,
    );
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        waiting as f64,
    );
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        kv_usage,
    );
    let name = "vllm:request_success_total";
    let _ = write!(
        out,
        "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter\n\
         {name}{{finished_reason=\"length\",{labels}}} {:?}\n",
        finished.count() as f64
    );
    let name = "vllm:e2e_request_latency_seconds";
    let _ = write!(
        out,
        "# HELP {name} Histogram of e2e request latency in seconds.\n# TYPE {name} histogram\n"
    );
    finished.write_prometheus(&mut out, name, &labels);
    out
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
pub(crate) mod tests;
