//! The demo's traffic story: a ramp of load phases (low, spike, idle) sent
//! in-process through the demo's gateway, so `gpufleet demo` shows the fleet
//! scaling up on the spike and back down once it is idle.

use crate::cli::output::Output;
use crate::demo::load::{self, LoadArgs, LoadProgress, ProgressCounts};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// One phase of the ramp: a steady Poisson rate for a while (0: no traffic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub rps: f64,
    pub lasts: Duration,
}

/// The demo ramp. A demo server runs 4 requests at once, ~0.64 s each, so
/// serves ~6 req/s: the low phase needs one replica, the spike the demo
/// spec's maximum of 4 (which serve ~25 req/s, so the spike stays below
/// that and queues drain once they are up). The idle phase outlasts the
/// spec's 30 s stable window plus 60 s scale-down delay, so the scale-down
/// shows too, and the whole ramp fits a 150 s demo run.
pub const RAMP: [Phase; 3] = [
    Phase {
        name: "low",
        rps: 2.0,
        lasts: Duration::from_secs(15),
    },
    Phase {
        name: "spike",
        rps: 20.0,
        lasts: Duration::from_secs(30),
    },
    Phase {
        name: "idle",
        rps: 0.0,
        lasts: Duration::from_secs(100),
    },
];

/// [`RAMP`] in words, for `--help` (a test keeps the two in step).
pub const RAMP_SUMMARY: &str = "low 2 req/s for 15s, then spike 20 req/s for 30s, then idle 100s";

/// How long one request may wait, for a replica and for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the ramp stands `elapsed` after it began: the phase's index and
/// how long it has run, or `None` once every phase is over.
pub fn phase_at(phases: &[Phase], elapsed: Duration) -> Option<(usize, Duration)> {
    let mut begun = Duration::ZERO;
    for (i, p) in phases.iter().enumerate() {
        if elapsed < begun + p.lasts {
            return Some((i, elapsed - begun));
        }
        begun += p.lasts;
    }
    None
}

/// The phases in words, as [`RAMP_SUMMARY`] gives them.
pub fn describe(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(|p| {
            let lasts = format!("{}s", p.lasts.as_secs());
            if p.rps > 0.0 {
                format!("{} {} req/s for {lasts}", p.name, p.rps)
            } else {
                format!("{} {lasts}", p.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// A running ramp; dropping it stops the load.
pub struct Ramp {
    began: Instant,
    phases: Vec<Phase>,
    progress: Arc<LoadProgress>,
    failures: Arc<Mutex<BTreeMap<String, u64>>>,
    driver: JoinHandle<()>,
}

/// What the ramp is doing, for the live view.
#[derive(Debug, Clone, PartialEq)]
pub struct RampStatus {
    /// The current phase and how long it has run; `None` once the ramp is over.
    pub phase: Option<(Phase, Duration)>,
    pub counts: ProgressCounts,
    /// Failure reasons of the phases that have finished.
    pub failures: BTreeMap<String, u64>,
}

impl Ramp {
    /// Starts sending `phases` for `model` through the gateway at `gateway`
    /// (its base URL). Each loaded phase is one load run, started on time
    /// even if the previous one still waits for answers.
    pub fn start(gateway: &str, model: &str, phases: &[Phase]) -> Self {
        let progress = Arc::new(LoadProgress::default());
        let failures = Arc::new(Mutex::new(BTreeMap::new()));
        let driver = tokio::spawn(drive(
            gateway.to_string(),
            model.to_string(),
            phases.to_vec(),
            progress.clone(),
            failures.clone(),
        ));
        Self {
            began: Instant::now(),
            phases: phases.to_vec(),
            progress,
            failures,
            driver,
        }
    }

    pub fn status(&self, now: Instant) -> RampStatus {
        RampStatus {
            phase: phase_at(&self.phases, now.saturating_duration_since(self.began))
                .map(|(i, into)| (self.phases[i], into)),
            counts: self.progress.counts(),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

impl Drop for Ramp {
    fn drop(&mut self) {
        // Aborting the driver drops its JoinSet, which aborts the load runs.
        self.driver.abort();
    }
}

async fn drive(
    gateway: String,
    model: String,
    phases: Vec<Phase>,
    progress: Arc<LoadProgress>,
    failures: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let mut runs = JoinSet::new();
    let mut next = Instant::now();
    for p in phases {
        if p.rps > 0.0 {
            let args = LoadArgs {
                url: None,
                gateway: Some(gateway.clone()),
                model: Some(model.clone()),
                rps: p.rps,
                duration: p.lasts.into(),
                ramp_to: None,
                max_tokens: None,
                timeout: REQUEST_TIMEOUT.into(),
                coordinator_http: String::new(),
                prompt: load::DEFAULT_PROMPT.to_string(),
                seed: None,
                output: Output::Table,
            };
            runs.spawn(load::run_load_with(args, progress.clone()));
        }
        next += p.lasts;
        tokio::time::sleep_until(next).await;
    }
    while let Some(done) = runs.join_next().await {
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        match done {
            Ok(Ok(report)) => {
                for (reason, n) in report.failures {
                    *failures.entry(reason).or_default() += n;
                }
            }
            Ok(Err(e)) => {
                *failures
                    .entry(format!("load run failed: {e:#}"))
                    .or_default() += 1
            }
            Err(e) => *failures.entry(format!("load run failed: {e}")).or_default() += 1,
        }
    }
}

/// One line for the live view.
pub fn render_status(s: &RampStatus) -> String {
    let c = s.counts;
    let counts = format!(
        "sent {}  ok {}  failed {}  held {}",
        c.sent, c.completed, c.failed, c.held
    );
    let head = match s.phase {
        Some((p, into)) => format!(
            "load  phase {:<5} {:>4} req/s  ({}s of {}s)",
            p.name,
            p.rps,
            into.as_secs(),
            p.lasts.as_secs()
        ),
        None => "load  ramp done, 0 req/s".to_string(),
    };
    let mut line = format!("{head}   {counts}");
    if !s.failures.is_empty() {
        let reasons: Vec<String> = s
            .failures
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        line.push_str(&format!("   ({})", reasons.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_follows_the_clock_and_ends() {
        let s = Duration::from_secs;
        assert_eq!(phase_at(&RAMP, s(0)), Some((0, s(0))));
        assert_eq!(phase_at(&RAMP, s(14)), Some((0, s(14))));
        assert_eq!(phase_at(&RAMP, s(15)), Some((1, s(0))));
        assert_eq!(phase_at(&RAMP, s(50)), Some((2, s(5))));
        assert_eq!(phase_at(&RAMP, s(145)), None);
        assert_eq!(phase_at(&[], s(0)), None);
    }

    #[test]
    fn the_help_text_tells_the_ramp_as_coded() {
        assert_eq!(describe(&RAMP), RAMP_SUMMARY);
        // The spike must be well above the low phase for the demo to scale.
        assert!(RAMP[1].rps >= 5.0 * RAMP[0].rps);
    }

    #[test]
    fn the_view_line_shows_phase_rate_counts_and_reasons() {
        let mut s = RampStatus {
            phase: Some((RAMP[1], Duration::from_secs(12))),
            counts: ProgressCounts {
                sent: 400,
                completed: 380,
                failed: 2,
                held: 3,
            },
            failures: BTreeMap::new(),
        };
        let line = render_status(&s);
        assert!(line.contains("phase spike"), "{line}");
        assert!(line.contains("20 req/s  (12s of 30s)"), "{line}");
        assert!(
            line.contains("sent 400  ok 380  failed 2  held 3"),
            "{line}"
        );
        s.phase = None;
        s.failures.insert("timeout".into(), 2);
        let line = render_status(&s);
        assert!(
            line.contains("ramp done") && line.contains("(timeout: 2)"),
            "{line}"
        );
    }
}
