//! Model-server metrics: the agent fetches each ready replica's metrics
//! endpoint every second and turns the engine's own names (vLLM, TGI, Triton,
//! SGLang, llama.cpp, or generic conventions) into the common serving signals
//! the autoscaler reads. One [`Scraper`] per replica holds its latency window.

pub mod histogram;
pub mod preset;
pub mod prom;
pub mod window;

mod generic;
mod llamacpp;
mod sglang;
mod tgi;
mod triton;
mod vllm;

use std::time::{Duration, Instant};

use crate::domain::ServingSignals;

pub use preset::PRESETS;
pub use prom::{LineError, MAX_BODY_BYTES};

use preset::{Engine, Reading};
use window::{History, Snapshot, WindowDelta};

/// Latency and request-rate window when the caller has no reason to choose.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// The quantile reported as `p95_latency_s`.
const LATENCY_QUANTILE: f64 = 0.95;

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("metrics from {url}: the engine serves no metrics (HTTP 501); {hint}")]
    MetricsDisabled { url: String, hint: String },
    #[error("unknown metrics preset `{preset}`; allowed: {}", PRESETS.join(", "))]
    UnknownPreset { preset: String },
    #[error("metrics window must be longer than zero")]
    ZeroWindow,
    #[error("metrics from {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("metrics from {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("metrics from {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("metrics from {url}: body is over the {limit}-byte limit")]
    BodyTooLarge { url: String, limit: usize },
    #[error("metrics from {url}: body is not UTF-8 text")]
    NotText { url: String },
    #[error(transparent)]
    Parse(#[from] prom::ParseError),
    #[error("the scrape has none of the `{preset}` preset's metrics (looked for {}); is the preset right, and are the engine's metrics enabled?", looked_for.join(", "))]
    NoPresetMetrics {
        preset: &'static str,
        looked_for: &'static [&'static str],
    },
}

impl ScrapeError {
    /// Why, in a few words and without the URL: for the `SIGNALS` column.
    pub fn reason(&self) -> String {
        match self {
            ScrapeError::UnknownPreset { preset } => format!("unknown preset {preset}"),
            ScrapeError::ZeroWindow => "zero window".to_string(),
            ScrapeError::Request { reason, .. } => reason.clone(),
            ScrapeError::Timeout { timeout, .. } => format!("no answer within {timeout:?}"),
            ScrapeError::Status { status, .. } => format!("HTTP {status}"),
            ScrapeError::MetricsDisabled { hint, .. } => format!("HTTP 501, {hint}"),
            ScrapeError::BodyTooLarge { limit, .. } => format!("body over {limit} bytes"),
            ScrapeError::NotText { .. } => "body not UTF-8".to_string(),
            ScrapeError::Parse(e) => format!("not Prometheus text: {e}"),
            ScrapeError::NoPresetMetrics { preset, .. } => {
                format!("none of the {preset} preset's metrics")
            }
        }
    }
}

/// Reads one replica's scrapes and keeps what the window needs.
#[derive(Debug, Clone)]
pub struct Scraper {
    engine: Engine,
    history: History,
    last: Option<ServingSignals>,
    activity: Activity,
    /// Scrapes that failed (as told by [`Scraper::failed`]), and whether the
    /// last one did.
    errors: u64,
    failing: bool,
    skipped_lines: usize,
    line_errors: Vec<LineError>,
}

impl Scraper {
    /// A scraper for one replica of an engine `preset` (one of [`PRESETS`]);
    /// latency and request rate cover the last `window`.
    pub fn new(preset: &str, window: Duration) -> Result<Scraper, ScrapeError> {
        let engine = Engine::from_name(preset).ok_or_else(|| ScrapeError::UnknownPreset {
            preset: preset.to_string(),
        })?;
        if window.is_zero() {
            return Err(ScrapeError::ZeroWindow);
        }
        Ok(Scraper {
            engine,
            history: History::new(window),
            last: None,
            activity: Activity::default(),
            errors: 0,
            failing: false,
            skipped_lines: 0,
            line_errors: Vec::new(),
        })
    }

    pub fn preset(&self) -> &'static str {
        self.engine.name()
    }

    /// A failed fetch in this preset's words: an engine that answers 501
    /// (llama.cpp without `--metrics`) is told how to turn metrics on.
    pub fn explain_fetch_error(&self, error: ScrapeError) -> ScrapeError {
        match error {
            ScrapeError::Status { url, status: 501 } => ScrapeError::MetricsDisabled {
                url,
                hint: self.engine.metrics_hint(),
            },
            other => other,
        }
    }

    /// Turns one scrape body, taken at `now`, into serving signals (`fresh`).
    /// Latency and request rate need a second scrape; until then they are
    /// unknown and 0. A body with a few bad lines still counts; see
    /// [`Scraper::skipped_lines`].
    pub fn observe(&mut self, body: &str, now: Instant) -> Result<ServingSignals, ScrapeError> {
        let exposition = prom::parse(body)?;
        self.skipped_lines = exposition.skipped_lines;
        self.line_errors = exposition.line_errors.clone();
        let reading = self.engine.read(&exposition);
        if reading.is_empty() {
            return Err(ScrapeError::NoPresetMetrics {
                preset: self.engine.name(),
                looked_for: self.engine.looked_for(),
            });
        }
        let delta = self.history.record(Snapshot {
            at: now,
            latency: reading.latency.clone(),
            completed: reading.completed,
            latency_seconds: reading.latency_seconds,
            latency_requests: reading.latency_requests,
            busy_seconds: reading.busy_seconds,
        });
        let mut signals = signals(&reading, delta.as_ref());
        signals.activity_total = self.activity.record(&reading);
        signals.scrape_errors = self.errors;
        self.failing = false;
        self.last = Some(signals.clone());
        Ok(signals)
    }

    /// Lines the last scrape skipped as malformed, and the first few of them.
    pub fn skipped_lines(&self) -> (usize, &[LineError]) {
        (self.skipped_lines, &self.line_errors)
    }

    /// The last signals, marked not fresh and carrying why: what to report
    /// when a scrape fails.
    /// Counts the failure; call it for every scrape that fetched or read
    /// nothing usable.
    pub fn failed(&mut self, error: &ScrapeError) -> ServingSignals {
        self.errors += 1;
        self.failing = true;
        ServingSignals {
            fresh: false,
            scrape_error: Some(error.reason()),
            scrape_errors: self.errors,
            ..self.last.clone().unwrap_or_default()
        }
    }

    /// Whether the last scrape failed.
    pub fn failing(&self) -> bool {
        self.failing
    }
}

/// Work a replica has done since its scraping began, from the counters that
/// move with every request (finished requests, tokens, decode steps): a
/// request too short for any gauge to be caught above zero between two
/// scrapes still moves them. A counter that goes down was reset (restarted
/// engine) and all of its new value counts.
#[derive(Debug, Clone, Default)]
struct Activity {
    /// The counters of the previous scrape; `None` before the first.
    last: Option<(Option<f64>, Option<f64>)>,
    total: f64,
}

impl Activity {
    fn record(&mut self, reading: &Reading) -> f64 {
        let now = (reading.completed, reading.work);
        if let Some((completed, work)) = self.last {
            let grew = |then, now| window::counter_delta(then, now).unwrap_or(0.0);
            self.total += grew(completed, now.0) + grew(work, now.1);
        }
        self.last = Some(now);
        self.total
    }
}

fn signals(reading: &Reading, delta: Option<&WindowDelta>) -> ServingSignals {
    let count = |v: Option<f64>| v.filter(|v| v.is_finite()).unwrap_or(0.0).max(0.0);
    let running = reading.running.or_else(|| {
        let delta = delta?;
        Some(delta.per_second(delta.busy_seconds?))
    });
    ServingSignals {
        waiting: count(reading.waiting),
        running: count(running),
        p95_latency_s: delta
            .and_then(|d| window_p95(reading, d))
            .filter(|v| v.is_finite() && *v >= 0.0),
        kv_cache_usage: reading.kv_cache_usage.filter(|v| v.is_finite()),
        requests_per_s: delta
            .and_then(|d| Some(d.per_second(d.completed?)))
            .unwrap_or(0.0)
            .max(0.0),
        fresh: true,
        ..ServingSignals::default()
    }
}

/// Latency over the window, best source first: the histogram's quantile, the
/// engine's own quantile, the histogram's mean, the duration counters' mean.
/// `None` when no request finished in the window.
fn window_p95(reading: &Reading, delta: &WindowDelta) -> Option<f64> {
    let histogram = delta.latency.as_ref();
    histogram
        .and_then(|h| h.quantile(LATENCY_QUANTILE))
        .or_else(|| {
            // The engine's quantile covers its own window; only trust it when
            // requests finished in ours.
            let finished = histogram.map(|h| h.count()).or(delta.latency_requests);
            reading
                .latency_p95
                .filter(|_| finished.is_some_and(|n| n > 0.0))
        })
        .or_else(|| histogram.and_then(|h| h.mean()))
        .or_else(|| match (delta.latency_seconds, delta.latency_requests) {
            (Some(seconds), Some(requests)) if requests > 0.0 => Some(seconds / requests),
            _ => None,
        })
}

/// Fetches a metrics endpoint, refusing bodies over [`MAX_BODY_BYTES`] and
/// giving up after `timeout`.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    fetch_limited(client, url, timeout, MAX_BODY_BYTES).await
}

async fn fetch_limited(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    limit: usize,
) -> Result<String, ScrapeError> {
    let request_failed = |e: reqwest::Error| ScrapeError::Request {
        url: url.to_string(),
        reason: e.to_string(),
    };
    let fetch = async {
        let mut response = client
            .get(url)
            // The classic text format: some engines answer OpenMetrics otherwise.
            .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4")
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || ScrapeError::BodyTooLarge {
            url: url.to_string(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| ScrapeError::NotText {
            url: url.to_string(),
        })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| ScrapeError::Timeout {
            url: url.to_string(),
            timeout,
        })?
}

#[cfg(test)]
mod prom_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
