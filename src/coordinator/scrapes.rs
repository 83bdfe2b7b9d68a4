//! What the coordinator remembers of each replica's scrapes between reports:
//! when a new scrape round arrived, when the replica last did work, whether
//! its metrics can be read at all, and the events when that changes.

use std::time::{Duration, Instant};

use crate::api::SignalsHealth;
use crate::domain::{ReplicaState, ReplicaStatus, ServingSignals};

/// A replica whose signals have not changed round for this long is stale:
/// its agent stopped scraping it or stopped reporting.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// One replica's scrapes as seen across reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScrapeMark {
    /// The agent's scrape round of the last report.
    pub seq: u64,
    /// When (on this clock) a new round last arrived.
    pub at: Instant,
    pub activity_total: f64,
    /// When the activity total last grew: traffic even where the gauges,
    /// sampled between requests, showed none.
    pub active_at: Option<Instant>,
}

impl ScrapeMark {
    /// The mark after a report carrying `signals`, given the one before.
    pub fn next(before: Option<&ScrapeMark>, signals: &ServingSignals, now: Instant) -> ScrapeMark {
        let Some(before) = before else {
            return ScrapeMark {
                seq: signals.scrape_seq,
                at: now,
                activity_total: signals.activity_total,
                active_at: None,
            };
        };
        let moved = signals.fresh && signals.activity_total != before.activity_total;
        ScrapeMark {
            seq: signals.scrape_seq,
            at: if before.seq == signals.scrape_seq {
                before.at
            } else {
                now
            },
            activity_total: if signals.fresh {
                signals.activity_total
            } else {
                before.activity_total
            },
            active_at: if moved { Some(now) } else { before.active_at },
        }
    }
}

/// Health of a replica's metrics from its last report and mark.
pub fn health(status: &ReplicaStatus, mark: Option<&ScrapeMark>, now: Instant) -> SignalsHealth {
    if status.state != ReplicaState::Ready {
        return SignalsHealth::NotScraped;
    }
    if let Some(reason) = &status.signals.scrape_error {
        return SignalsHealth::Failing(reason.clone());
    }
    let recent = mark.is_some_and(|m| now.saturating_duration_since(m.at) <= STALE_AFTER);
    if status.signals.fresh && recent {
        SignalsHealth::Ok
    } else {
        SignalsHealth::Stale
    }
}

/// A replica's scrapes started failing or recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeChange {
    pub replica: String,
    pub model: String,
    pub message: String,
}

/// Scrape failures that began and ended between two reports of one node:
/// one event on the first failure, one on recovery, none while it lasts.
pub fn scrape_changes(before: &[ReplicaStatus], after: &[ReplicaStatus]) -> Vec<ScrapeChange> {
    let mut out = Vec::new();
    for r in after.iter().filter(|r| r.state == ReplicaState::Ready) {
        let was = before
            .iter()
            .find(|b| b.id == r.id)
            .and_then(|b| b.signals.scrape_error.as_ref());
        let message = match (was, &r.signals.scrape_error) {
            (None, Some(now)) => format!(
                "metrics scrape failing: {now}; the autoscaler cannot see this replica's load"
            ),
            (Some(_), None) if r.signals.fresh => "metrics scrape recovered".to_string(),
            _ => continue,
        };
        out.push(ScrapeChange {
            replica: r.id.clone(),
            model: r.model.clone(),
            message,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(id: &str, signals: ServingSignals) -> ReplicaStatus {
        ReplicaStatus {
            id: id.into(),
            model: "m".into(),
            state: ReplicaState::Ready,
            signals,
            ..ReplicaStatus::default()
        }
    }

    fn ok(seq: u64, activity: f64) -> ServingSignals {
        ServingSignals {
            fresh: true,
            scrape_seq: seq,
            activity_total: activity,
            ..ServingSignals::default()
        }
    }

    fn failing(reason: &str) -> ServingSignals {
        ServingSignals {
            scrape_error: Some(reason.into()),
            ..ServingSignals::default()
        }
    }

    #[test]
    fn activity_that_grew_between_reports_is_marked_when_it_arrived() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let first = ScrapeMark::next(None, &ok(1, 40.0), t0);
        assert_eq!(
            first.active_at, None,
            "the first report has nothing to compare"
        );
        let same = ScrapeMark::next(Some(&first), &ok(2, 40.0), t0 + s);
        assert_eq!(same.active_at, None);
        assert_eq!(same.at, t0 + s, "a new round");
        let grew = ScrapeMark::next(Some(&same), &ok(3, 48.0), t0 + 2 * s);
        assert_eq!(grew.active_at, Some(t0 + 2 * s));
        let repeated = ScrapeMark::next(Some(&grew), &ok(3, 48.0), t0 + 3 * s);
        assert_eq!(repeated.at, t0 + 2 * s, "the same round again");
        assert_eq!(repeated.active_at, Some(t0 + 2 * s));
        // A failed scrape carries the last good total; it is no activity.
        let failed = ScrapeMark::next(Some(&repeated), &failing("HTTP 501"), t0 + 4 * s);
        assert_eq!(failed.activity_total, 48.0);
        assert_eq!(failed.active_at, Some(t0 + 2 * s));
    }

    #[test]
    fn health_reads_ok_failing_or_stale() {
        let t0 = Instant::now();
        let fresh = ready("a", ok(1, 0.0));
        let mark = ScrapeMark::next(None, &fresh.signals, t0);
        assert_eq!(health(&fresh, Some(&mark), t0), SignalsHealth::Ok);
        let later = t0 + STALE_AFTER + Duration::from_secs(1);
        assert_eq!(health(&fresh, Some(&mark), later), SignalsHealth::Stale);
        let broken = ready("a", failing("HTTP 501, start the engine with --metrics"));
        let h = health(&broken, Some(&mark), t0);
        assert_eq!(
            h.to_string(),
            "failing: HTTP 501, start the engine with --metrics"
        );
        assert_eq!(SignalsHealth::parse(&h.to_string()), h);
        assert_eq!(
            health(&ready("a", ServingSignals::default()), None, t0),
            SignalsHealth::Stale
        );
        let starting = ReplicaStatus {
            state: ReplicaState::Starting,
            ..fresh
        };
        assert_eq!(health(&starting, None, t0).to_string(), "-");
        for h in [
            SignalsHealth::Ok,
            SignalsHealth::Stale,
            SignalsHealth::NotScraped,
        ] {
            assert_eq!(SignalsHealth::parse(&h.to_string()), h);
        }
    }

    #[test]
    fn one_event_when_scrapes_start_failing_and_one_when_they_recover() {
        let good = vec![ready("a", ok(1, 0.0))];
        let bad = vec![ready("a", failing("HTTP 501"))];
        let changes = scrape_changes(&good, &bad);
        assert_eq!(changes.len(), 1);
        assert!(
            changes[0].message.contains("failing: HTTP 501"),
            "{changes:?}"
        );
        assert!(
            scrape_changes(&bad, &bad).is_empty(),
            "no event while it lasts"
        );
        let back = scrape_changes(&bad, &good);
        assert_eq!(back[0].message, "metrics scrape recovered");
        // A replica that fails from its first report is announced too.
        assert_eq!(scrape_changes(&[], &bad).len(), 1);
    }
}
