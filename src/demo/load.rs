//! Load generator: open-loop Poisson traffic against one model server or over
//! a model's ready replicas (least outstanding first; held, with a wake call,
//! while there is none), reporting what was sent, what completed, why the
//! rest failed, and the latency percentiles.

use crate::cli::output::Output;
use crate::demo::arrivals::{ArrivalRate, RateError};
use crate::demo::balancer::{Outstanding, SharedBalancer, Waker};
use crate::demo::endpoints::{EndpointWatch, EndpointsError, REFRESH_EVERY};
use crate::demo::latency::Percentiles;
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

/// The failure reason of requests that found no replica to go to; the
/// report says within how long, e.g. "no ready replica within 60s".
pub const NO_READY_REPLICA: &str = "no ready replica";

/// The prompt of every request unless told otherwise.
pub const DEFAULT_PROMPT: &str = "Explain why warm page caches make model servers start fast.";

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Base URL of one model server, e.g. http://127.0.0.1:20001.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub url: Option<String>,
    /// Send every request to this gpufleet gateway (its base URL, e.g.
    /// http://127.0.0.1:7470) naming --model in the body: the gateway holds,
    /// wakes and spreads them.
    #[arg(long, requires = "model")]
    pub gateway: Option<String>,
    /// Spread requests over this model's ready replicas, as the coordinator
    /// lists them on /v1/endpoints (re-read every second): the replica with
    /// the fewest outstanding requests first, ties in turn. While the model
    /// has none, requests are held (up to --timeout) and the coordinator is
    /// asked to wake the model, once a second.
    #[arg(long)]
    pub model: Option<String>,
    /// Mean requests per second (Poisson arrivals); the start rate with --ramp-to.
    #[arg(long)]
    pub rps: f64,
    /// How long to send.
    #[arg(long)]
    pub duration: humantime::Duration,
    /// Ramp the rate linearly from --rps to this by the end of --duration.
    #[arg(long)]
    pub ramp_to: Option<f64>,
    /// max_tokens of each request [default: the server's].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Longest wait for one request, counted from when it was due (time held
    /// waiting for a replica included).
    #[arg(long, default_value = "60s")]
    pub timeout: humantime::Duration,
    /// The coordinator's HTTP base URL (for --model).
    #[arg(
        long,
        env = "GPUFLEET_COORDINATOR_HTTP",
        default_value = "http://127.0.0.1:7461"
    )]
    pub coordinator_http: String,
    /// Prompt of every request.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Seed of the arrival times, to repeat a run exactly.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Report format: set from the global `-o`.
    #[arg(skip)]
    pub output: Output,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--url {url}: {reason}; allowed: an http:// base URL such as http://127.0.0.1:20001")]
    BadUrl { url: String, reason: String },
    #[error("give --url URL or --model NAME: the load needs somewhere to go")]
    NoTarget,
    #[error(
        "--gateway {url}: {reason}; allowed: an http:// base URL such as http://127.0.0.1:7470"
    )]
    BadGateway { url: String, reason: String },
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
}

impl LoadError {
    /// A refusal of the flags as given, not a failure of the run.
    pub fn is_usage(&self) -> bool {
        !matches!(self, LoadError::Endpoints(_))
    }
}

/// What one run did. `sent == completed + failed`: a request still running
/// when the timeout ends the run counts as failed ("timeout").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub achieved_rps: f64,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p95_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
}

/// Where each request goes.
enum Route {
    One(String),
    /// A gateway's completions URL: the model travels in the body.
    Gateway(String),
    Replicas {
        watch: EndpointWatch,
        balancer: SharedBalancer,
        waker: Arc<Waker>,
    },
}

impl Route {
    fn one(base: &str) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(bad(format!("scheme {} is not supported", parsed.scheme())));
        }
        Ok(Self::One(completions_url(base)))
    }

    fn gateway(base: &str) -> Result<Self, LoadError> {
        match reqwest::Url::parse(base) {
            Ok(u) if u.scheme() == "http" => Ok(Self::Gateway(completions_url(base))),
            Ok(u) => Err(LoadError::BadGateway {
                url: base.to_string(),
                reason: format!("scheme {} is not supported", u.scheme()),
            }),
            Err(e) => Err(LoadError::BadGateway {
                url: base.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

fn completions_url(base: &str) -> String {
    format!("{}/v1/completions", base.trim_end_matches('/'))
}

/// The request body. Sent straight to replicas it names no model: vLLM
/// serves under the weights path unless told otherwise, so the fleet's model
/// name could be refused, and an engine with one model serves it to
/// requests that name none. Through a gateway it names the model, which is
/// how the gateway routes.
#[derive(Debug, Serialize)]
struct CompletionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CompletionReply {
    choices: Vec<serde_json::Value>,
}

/// Live counts of one or more runs, for a view that shows load as it goes
/// (the demo's ramp); shared by every run given the same one.
#[derive(Debug, Default)]
pub struct LoadProgress {
    sent: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    held: AtomicU64,
}

/// A moment's reading of [`LoadProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressCounts {
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
    /// Requests waiting for a replica of their model to be ready.
    pub held: u64,
}

impl LoadProgress {
    pub fn counts(&self) -> ProgressCounts {
        ProgressCounts {
            sent: self.sent.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
    }
}

/// Counts one request as held while it lives.
struct Held<'a>(&'a LoadProgress);

impl<'a> Held<'a> {
    fn new(p: &'a LoadProgress) -> Self {
        p.held.fetch_add(1, Ordering::Relaxed);
        Self(p)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run_load(args: LoadArgs) -> anyhow::Result<LoadReport> {
    run_load_with(args, Arc::new(LoadProgress::default())).await
}

/// [`run_load`], counting what it does into `progress` as it goes.
pub async fn run_load_with(
    args: LoadArgs,
    progress: Arc<LoadProgress>,
) -> anyhow::Result<LoadReport> {
    let window: Duration = args.duration.into();
    let timeout: Duration = args.timeout.into();
    let rate = ArrivalRate::new(args.rps, args.ramp_to.unwrap_or(args.rps), window)
        .map_err(LoadError::from)?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let route = match (&args.url, &args.gateway, &args.model) {
        (Some(url), _, _) => Route::one(url)?,
        (None, Some(gateway), Some(_)) => Route::gateway(gateway)?,
        (None, None, Some(model)) => Route::Replicas {
            watch: EndpointWatch::start(
                client.clone(),
                &args.coordinator_http,
                model,
                REFRESH_EVERY,
            )
            .await
            .map_err(LoadError::from)?,
            balancer: SharedBalancer::default(),
            waker: Arc::new(Waker::new(client.clone(), &args.coordinator_http, model)),
        },
        (None, _, None) => return Err(LoadError::NoTarget.into()),
    };
    let body = Arc::new(CompletionRequest {
        model: args.gateway.is_some().then(|| args.model.clone()).flatten(),
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
    });
    let rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    tracing::info!(
        expected = rate.expected_arrivals().round(),
        "sending for {window:?}"
    );

    let mut tally = Tally::new(progress.clone());
    let mut in_flight = JoinSet::new();
    let start = Instant::now();
    let mut last_send = start;
    for offset in rate.arrivals(rng) {
        let due = start + offset;
        // Open loop: the schedule never waits on responses; finished ones
        // are only collected while waiting for the next send.
        loop {
            tokio::select! {
                biased;
                Some(done) = in_flight.join_next() => tally.record(done),
                () = tokio::time::sleep_until(due) => break,
            }
        }
        last_send = Instant::now();
        tally.sent();
        let request = Request {
            client: client.clone(),
            body: body.clone(),
            due,
            deadline: due + timeout,
        };
        match &route {
            Route::One(url) | Route::Gateway(url) => {
                in_flight.spawn(request.send(url.clone()));
            }
            Route::Replicas {
                watch,
                balancer,
                waker,
            } => {
                in_flight.spawn(request.send_balanced(
                    watch.subscribe(),
                    balancer.clone(),
                    waker.clone(),
                    progress.clone(),
                ));
            }
        }
    }
    // A sender that fell behind its schedule sent over a longer time.
    let sending = window.max(last_send - start);

    // Each request ends itself by its own deadline with its own reason; the
    // slack lets those reasons, not this backstop, tell the story.
    let deadline = start + sending + timeout + Duration::from_millis(500);
    while !in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
            Ok(Some(done)) => tally.record(done),
            Ok(None) => break,
            Err(_) => {
                tally.fail("timeout", in_flight.len() as u64);
                in_flight.abort_all();
                break;
            }
        }
    }
    Ok(tally.report(sending))
}

/// One request of a run; its latency counts from when it was due, so a late
/// send or a wait for a replica shows up as latency instead of hiding (no
/// coordinated omission).
struct Request {
    client: reqwest::Client,
    body: Arc<CompletionRequest>,
    due: Instant,
    /// When it is given up on, waiting for a replica included.
    deadline: Instant,
}

impl Request {
    /// Sends to the replica with the fewest outstanding requests, holding
    /// the request (and nudging the coordinator to wake the model) while
    /// the model has no ready replica.
    async fn send_balanced(
        self,
        mut replicas: tokio::sync::watch::Receiver<Arc<Vec<String>>>,
        balancer: SharedBalancer,
        waker: Arc<Waker>,
        progress: Arc<LoadProgress>,
    ) -> Result<Duration, String> {
        let mut held = None;
        let claim = loop {
            let current = replicas.borrow_and_update().clone();
            if let Some(claim) = Outstanding::pick(&balancer, &current) {
                break claim;
            }
            let now = Instant::now();
            if now >= self.deadline {
                let waited = humantime::format_duration(self.deadline - self.due);
                return Err(format!("{NO_READY_REPLICA} within {waited}"));
            }
            held.get_or_insert_with(|| Held::new(&progress));
            waker.nudge(now);
            // Wake up for a new list, and at least once a second to nudge again.
            let recheck = self.deadline.min(now + crate::demo::balancer::WAKE_EVERY);
            tokio::select! {
                changed = replicas.changed() => {
                    if changed.is_err() {
                        // The list will not change any more: wait out the deadline.
                        tokio::time::sleep_until(self.deadline).await;
                    }
                }
                () = tokio::time::sleep_until(recheck) => {}
            }
        };
        drop(held);
        let url = completions_url(claim.replica());
        self.send(url).await
    }

    async fn send(self, url: String) -> Result<Duration, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let resp = self
            .client
            .post(&url)
            .timeout(left)
            .json(&*self.body)
            .send()
            .await
            .map_err(|e| failure_reason(&url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("http {status}"));
        }
        let reply: CompletionReply = resp.json().await.map_err(|e| failure_reason(&url, &e))?;
        if reply.choices.is_empty() {
            return Err("invalid response".into());
        }
        Ok(self.due.elapsed())
    }
}

/// A few coarse reasons, so a report groups thousands of failures readably.
fn failure_reason(url: &str, e: &reqwest::Error) -> String {
    tracing::debug!("{url}: {e:#}");
    let reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_decode() {
        "invalid response"
    } else {
        "request error"
    };
    reason.to_string()
}

#[derive(Debug)]
struct Tally {
    sent: u64,
    latencies_s: Vec<f64>,
    failures: BTreeMap<String, u64>,
    progress: Arc<LoadProgress>,
}

impl Tally {
    fn new(progress: Arc<LoadProgress>) -> Self {
        Self {
            sent: 0,
            latencies_s: Vec::new(),
            failures: BTreeMap::new(),
            progress,
        }
    }

    fn sent(&mut self) {
        self.sent += 1;
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&mut self, done: Result<Result<Duration, String>, JoinError>) {
        match done {
            Ok(Ok(latency)) => {
                self.latencies_s.push(latency.as_secs_f64());
                self.progress.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(reason)) => self.fail(&reason, 1),
            Err(e) => self.fail(&format!("request task failed: {e}"), 1),
        }
    }

    fn fail(&mut self, reason: &str, n: u64) {
        *self.failures.entry(reason.to_string()).or_default() += n;
        self.progress.failed.fetch_add(n, Ordering::Relaxed);
    }

    fn report(self, sending: Duration) -> LoadReport {
        let p = Percentiles::from_samples(&self.latencies_s);
        let duration_s = sending.as_secs_f64();
        LoadReport {
            sent: self.sent,
            completed: self.latencies_s.len() as u64,
            failed: self.failures.values().sum(),
            failures: self.failures,
            duration_s,
            achieved_rps: self.sent as f64 / duration_s.max(1e-9),
            p50_s: p.map(|p| p.p50_s),
            p90_s: p.map(|p| p.p90_s),
            p95_s: p.map(|p| p.p95_s),
            p99_s: p.map(|p| p.p99_s),
            max_s: p.map(|p| p.max_s),
        }
    }
}

pub fn print_report(report: &LoadReport, output: Output) {
    print!("{}", render_report(report, output));
}

/// The report as `print_report` prints it: one JSON object on one line, a
/// YAML document, or a table.
pub fn render_report(report: &LoadReport, output: Output) -> String {
    match output {
        Output::Json => {
            // Serializing plain numbers and string-keyed maps cannot fail.
            let mut line = serde_json::to_string(report).unwrap_or_default();
            line.push('\n');
            return line;
        }
        Output::Yaml => {
            return crate::cli::output::to_yaml(&serde_json::to_value(report).unwrap_or_default())
        }
        Output::Table | Output::Wide => {}
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "sent       {} in {:.1} s ({:.1} req/s)",
        report.sent, report.duration_s, report.achieved_rps
    );
    let _ = writeln!(out, "completed  {}", report.completed);
    let _ = writeln!(out, "failed     {}", report.failed);
    let width = report.failures.keys().map(String::len).max().unwrap_or(0);
    for (reason, n) in &report.failures {
        let _ = writeln!(out, "  {reason:<width$}  {n}");
    }
    match (
        report.p50_s,
        report.p90_s,
        report.p95_s,
        report.p99_s,
        report.max_s,
    ) {
        (Some(p50), Some(p90), Some(p95), Some(p99), Some(max)) => {
            let _ = writeln!(
                out,
                "latency    p50 {p50:.3} s  p90 {p90:.3} s  p95 {p95:.3} s  p99 {p99:.3} s  max {max:.3} s"
            );
        }
        _ => out.push_str("latency    no request completed\n"),
    }
    out
}

#[cfg(test)]
mod tests;
