//! The fleet task's own cost, for `/metrics`: how long ticks and their
//! phases take, how long a report waits and is handled, how long the
//! assignment fan-out takes. The fleet task writes, the HTTP handler reads;
//! atomics, so neither waits for the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::exposition::{family, float, labels, Series};

/// Upper bounds of the histogram buckets, in seconds: from well under a
/// millisecond (a report) to seconds (a tick that places thousands).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram of durations.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| float(*b));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {cumulative}", float(sum));
    }

    /// The time observed so far, all observations together.
    #[cfg(test)]
    pub(super) fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket that holds quantile `q` (0..=1) of the
    /// observations so far; None without any.
    #[cfg(test)]
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// The steps of a tick, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Node lifecycle: ready, suspect, lost.
    Nodes,
    /// Desired replica counts (the autoscaler).
    Decide,
    /// Replacements: lost nodes, unhealthy GPUs, crash loops, spec changes.
    Replace,
    /// Surplus replicas retired and retirements finished.
    Surplus,
    /// Missing replicas placed, drains advanced, warm weights planned.
    Place,
    /// Assignments computed and sent to the agents.
    Assign,
    /// The routing table published to gateways.
    Routes,
    /// Events and demand history written to the store.
    Store,
    /// Not a step: reports handled between the steps (so none waits behind
    /// a whole tick), left out of the tick's own time.
    Reports,
}

impl Phase {
    const ALL: [Phase; 9] = [
        Phase::Nodes,
        Phase::Decide,
        Phase::Replace,
        Phase::Surplus,
        Phase::Place,
        Phase::Assign,
        Phase::Routes,
        Phase::Store,
        Phase::Reports,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Phase::Nodes => "nodes",
            Phase::Decide => "decide",
            Phase::Replace => "replace",
            Phase::Surplus => "surplus",
            Phase::Place => "place",
            Phase::Assign => "assign",
            Phase::Routes => "routes",
            Phase::Store => "store",
            Phase::Reports => "reports",
        }
    }
}

/// What the fleet task measures of itself.
#[derive(Default)]
pub struct FleetMetrics {
    pub tick: Histogram,
    /// Time spent in each phase, summed over all ticks.
    phase_ns: [AtomicU64; Phase::ALL.len()],
    /// The last tick's time in each phase.
    phase_last_ns: [AtomicU64; Phase::ALL.len()],
    /// From a report's arrival at its session to the end of its handling
    /// by the fleet task (so the wait in the command queue counts).
    pub report: Histogram,
    /// Ticks that sent assignments: the time to compute and send them all.
    pub fanout: Histogram,
    pub assignments_sent: AtomicU64,
    pub reports: AtomicU64,
    /// Reports replaced by a newer one from the same session before the
    /// fleet task got to them (`handle::ReportSlot`).
    pub reports_superseded: AtomicU64,
    /// Agents disconnected or refused for misbehaving, by why.
    pub sessions_refused: [AtomicU64; SessionRefusal::ALL.len()],
}

/// Why an agent's session was refused or ended by the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Reports far faster than any agent sends them.
    ReportRate,
    /// A message over the size limit, or one that does not decode.
    BadMessage,
    /// More sessions open than `limits.max_sessions`.
    SessionLimit,
}

impl SessionRefusal {
    pub const ALL: [SessionRefusal; 3] = [
        SessionRefusal::ReportRate,
        SessionRefusal::BadMessage,
        SessionRefusal::SessionLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionRefusal::ReportRate => "report_rate",
            SessionRefusal::BadMessage => "bad_message",
            SessionRefusal::SessionLimit => "session_limit",
        }
    }
}

/// Times the phases of one tick: each `done` charges the time since the
/// previous one to a phase.
pub struct PhaseClock {
    metrics: &'static FleetMetrics,
    started: std::time::Instant,
    last: std::time::Instant,
    /// This tick's time per phase so far (a phase may come more than once).
    spent_ns: [u64; Phase::ALL.len()],
    /// When reports were last taken in (or the tick began).
    reports_at: std::time::Instant,
}

impl FleetMetrics {
    /// The process's one set: kept across a change of leader (a new fleet
    /// task), so counters never go back.
    pub fn process() -> &'static FleetMetrics {
        static METRICS: std::sync::LazyLock<FleetMetrics> =
            std::sync::LazyLock::new(FleetMetrics::default);
        &METRICS
    }

    pub fn phases(&'static self) -> PhaseClock {
        let now = std::time::Instant::now();
        PhaseClock {
            metrics: self,
            started: now,
            last: now,
            spent_ns: [0; Phase::ALL.len()],
            reports_at: now,
        }
    }

    pub fn refused(&self, why: SessionRefusal) {
        self.sessions_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes every family; `queued` is the fleet task's command queue depth now.
    pub fn write(&self, out: &mut String, queued: usize, capacity: usize) {
        self.tick.write(
            out,
            "gpufleet_coordinator_tick_seconds",
            "Time one tick of the control loop took, all phases.",
        );
        let phases = |v: &[AtomicU64; Phase::ALL.len()]| -> Vec<Series> {
            Phase::ALL
                .iter()
                .map(|p| {
                    let s = v[*p as usize].load(Ordering::Relaxed) as f64 / 1e9;
                    (labels(&[("phase", p.as_str())]), float(s))
                })
                .collect()
        };
        family(
            out,
            "gpufleet_coordinator_tick_phase_seconds_total",
            "counter",
            "Time ticks spent in each phase, summed.",
            phases(&self.phase_ns),
        );
        family(
            out,
            "gpufleet_coordinator_tick_phase_seconds",
            "gauge",
            "Time the last tick spent in each phase.",
            phases(&self.phase_last_ns),
        );
        self.report.write(
            out,
            "gpufleet_coordinator_report_seconds",
            "From an agent report's arrival to the end of its handling, the wait for the fleet task included.",
        );
        self.fanout.write(
            out,
            "gpufleet_coordinator_assignment_fanout_seconds",
            "Time a tick took to compute and send the assignments that changed.",
        );
        let counter = |name: &str, help: &str, v: &AtomicU64, out: &mut String| {
            family(
                out,
                name,
                "counter",
                help,
                vec![(String::new(), v.load(Ordering::Relaxed).to_string())],
            );
        };
        counter(
            "gpufleet_coordinator_assignments_sent_total",
            "Assignments sent to agents.",
            &self.assignments_sent,
            out,
        );
        counter(
            "gpufleet_coordinator_reports_total",
            "Agent reports handled.",
            &self.reports,
            out,
        );
        counter(
            "gpufleet_coordinator_reports_superseded_total",
            "Agent reports replaced by a newer one from the same node before the fleet task handled them.",
            &self.reports_superseded,
            out,
        );
        family(
            out,
            "gpufleet_coordinator_commands_queued",
            "gauge",
            "Requests and reports waiting for the fleet task.",
            vec![(String::new(), queued.to_string())],
        );
        family(
            out,
            "gpufleet_coordinator_commands_capacity",
            "gauge",
            "Room in the fleet task's queue; senders wait when it is full.",
            vec![(String::new(), capacity.to_string())],
        );
        family(
            out,
            "gpufleet_agent_sessions_refused_total",
            "counter",
            "Agent sessions the coordinator refused or ended: report rate, bad or oversized message, session limit.",
            SessionRefusal::ALL
                .iter()
                .map(|r| {
                    (
                        labels(&[("reason", r.as_str())]),
                        self.sessions_refused[*r as usize]
                            .load(Ordering::Relaxed)
                            .to_string(),
                    )
                })
                .collect(),
        );
    }
}

impl PhaseClock {
    pub fn done(&mut self, phase: Phase) {
        let now = std::time::Instant::now();
        let ns = now.duration_since(self.last).as_nanos() as u64;
        self.last = now;
        self.metrics.phase_ns[phase as usize].fetch_add(ns, Ordering::Relaxed);
        self.spent_ns[phase as usize] += ns;
        if phase == Phase::Reports {
            self.reports_at = now;
        }
    }

    /// How long since reports were last taken in during this tick.
    pub fn since_reports(&self) -> Duration {
        self.reports_at.elapsed()
    }

    /// Ends the tick: its time, less the reports handled between its
    /// phases, goes into the tick histogram.
    pub fn finish(self) {
        for (last, spent) in self.metrics.phase_last_ns.iter().zip(self.spent_ns) {
            last.store(spent, Ordering::Relaxed);
        }
        let reports = Duration::from_nanos(self.spent_ns[Phase::Reports as usize]);
        self.metrics
            .tick
            .observe(self.started.elapsed().saturating_sub(reports));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_into_cumulative_buckets_with_one_type_line() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "help");
        assert!(out.starts_with("# HELP x_seconds help\n# TYPE x_seconds histogram\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 10.00305"), "{out}");
        assert_eq!(h.quantile_bound(0.5), Some(0.005));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn phases_are_charged_in_turn_and_the_tick_as_a_whole() {
        let m: &'static FleetMetrics = Box::leak(Box::default());
        let mut clock = m.phases();
        std::thread::sleep(Duration::from_millis(2));
        clock.done(Phase::Place);
        clock.done(Phase::Assign);
        clock.finish();
        assert!(m.phase_ns[Phase::Place as usize].load(Ordering::Relaxed) >= 2_000_000);
        assert_eq!(m.tick.quantile_bound(1.0).map(|b| b >= 0.0025), Some(true));
        let mut out = String::new();
        m.write(&mut out, 3, 1021);
        assert!(out.contains("gpufleet_coordinator_commands_queued 3\n"));
        assert!(out.contains("gpufleet_coordinator_tick_phase_seconds_total{phase=\"place\"}"));
    }
}
