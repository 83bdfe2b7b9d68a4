//! One model's scaling step, as the coordinator's control loop runs it and
//! the simulator replays it: the tick's signals into the autoscaler and the
//! demand history, the forecast one replica start ahead, its floor only
//! while the forecast has been accurate, then the decision. Both callers go
//! through [`ModelScaler::step`], so a simulated result is the coordinator's.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::model::ScalingSpec;
use crate::coordinator::predict::{replicas_for, DemandHistory, Forecast};

use super::history::carries_demand;
use super::{format_count, format_span, Autoscaler, Decision, Signals};

/// Forecasts scored before pre-scaling may trust them.
const MIN_SCORED: u32 = 6;
/// One forecast is kept for scoring per this many seconds.
const SCORE_EVERY_S: i64 = 10;
/// Forecasts an exponential mean of the error spans.
const SCORE_SPAN: f64 = 20.0;

/// A model's scaling state: the autoscaler, its demand history, and how
/// good its recent forecasts were.
#[derive(Debug, Clone, Default)]
pub struct ModelScaler {
    pub autoscaler: Autoscaler,
    pub demand: DemandHistory,
    score: ForecastScore,
    /// Replicas seen loading: their start is measured when they are ready.
    loading: HashSet<String>,
}

/// What one tick brings.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub now: Instant,
    pub now_unix_s: i64,
    /// This tick's signals when fresh (at least one replica scraped anew,
    /// or none ready with replicas starting); `None` holds the windows.
    pub signals: Option<Signals>,
    /// The count last decided.
    pub current: u32,
    /// Look-ahead until a replica start has been measured.
    pub default_horizon: Duration,
    /// Whether something (pre-scaling or predictive warming) reads the
    /// forecast; without, it is not computed.
    pub forecast: bool,
}

/// What a forecast asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    pub replicas: u32,
    /// The requests in service it expects (what forecasts are scored in).
    pub in_service: f64,
    /// The count and what it rests on, in words.
    pub words: String,
}

/// The decision and what the forecast asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub decision: Decision,
    /// Replicas the forecast one start ahead asks for (0 when not asked).
    pub predicted: u32,
}

impl ModelScaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// One scaling step for a model with a `[scaling]` table.
    pub fn step(&mut self, spec: &ScalingSpec, tick: &Tick) -> Step {
        let now = tick.now;
        if let Some(s) = &tick.signals {
            self.autoscaler.observe(now, s);
        }
        // What the demand was this tick, where known: measured by a ready
        // replica or a gateway's report, or none at all for a model at zero
        // (any request would have woken it).
        let demand = match &tick.signals {
            Some(s) if carries_demand(s) => {
                Some((s.ongoing, s.requests_per_s, s.waiting.unwrap_or(0.0)))
            }
            _ if tick.current == 0 => Some((0.0, 0.0, 0.0)),
            _ => None,
        };
        if let Some((ongoing, rps, waiting)) = demand {
            self.demand.record(tick.now_unix_s, ongoing, rps, waiting);
        }
        let horizon = self.horizon(tick.default_horizon);
        // Forecasts kept in one measure are not scored in the other (the
        // service time came to be measured, or the spec changed).
        let by_arrivals = self.service_for_demand(spec).is_some();
        if self.score.by_arrivals != Some(by_arrivals) {
            self.score = ForecastScore {
                by_arrivals: Some(by_arrivals),
                ..ForecastScore::default()
            };
        }
        if let Some((ongoing, rps, waiting)) = demand {
            let actual = self.in_service(spec, ongoing, rps, waiting);
            self.score.settle(tick.now_unix_s, actual, spec);
        }
        let mut forecast = None;
        let predicted = if tick.forecast || spec.prescale {
            let f = self.demand.forecast(tick.now_unix_s, horizon);
            let p = self.forecast_replicas(spec, &f);
            self.score.expect(tick.now_unix_s + horizon, p.in_service);
            forecast = Some(p.words);
            p.replicas
        } else {
            0
        };
        let trusted = self
            .score
            .error()
            .is_some_and(|e| e <= spec.prescale_max_error)
            && self.score.scored >= MIN_SCORED;
        if spec.prescale {
            self.autoscaler
                .prescale_floor(if trusted { predicted } else { 0 }, now);
        }
        let mut decision = self.autoscaler.decide(spec, tick.current, now);
        if spec.prescale {
            let error = self
                .score
                .error()
                .map_or("not yet scored".to_string(), |e| {
                    format!("{:.0}%", e * 100.0)
                });
            if let Some(f) = forecast {
                decision.inputs.push(("forecast".into(), f));
            }
            decision.inputs.push(("forecast_error".into(), error));
            decision.inputs.push((
                "prescale".into(),
                if trusted {
                    format!("on (error at most {:.0}%)", spec.prescale_max_error * 100.0)
                } else {
                    format!(
                        "off until the forecast error is at most {:.0}% over {MIN_SCORED} forecasts",
                        spec.prescale_max_error * 100.0
                    )
                },
            ));
        }
        Step {
            decision,
            predicted,
        }
    }

    /// The replicas a forecast asks for, at the target the
    /// autoscaler would set for that load, within the spec's bounds, with
    /// what they rest on in words. The coordinator's predictive warming
    /// reads the same count, so the nodes warmed are those pre-scaling uses.
    pub fn forecast_replicas(&self, spec: &ScalingSpec, f: &Forecast) -> Predicted {
        let in_service =
            self.in_service(spec, f.expected_ongoing, f.expected_rps, f.expected_waiting);
        // The SLO's target is for the load in service, as the autoscaler
        // reads it (arrivals × service), not for a queue.
        let load = self
            .autoscaler
            .measured()
            .1
            .map_or(in_service, |service| f.expected_rps * service);
        let target = self.autoscaler.target_at(spec, load);
        let replicas = replicas_for(in_service, f.expected_rps, target, spec);
        let words =
            match self.service_for_demand(spec) {
                Some(service) => format!(
                "{replicas} for {} req/s × service {} = {} concurrent{} / target {} per replica; \
                 requests per second: {}",
                format_count(f.expected_rps),
                format_span(Duration::from_secs_f64(service)),
                format_count(f.expected_rps * service),
                if in_service > f.expected_rps * service + 0.05 {
                    format!(" + {} waiting", format_count(in_service - f.expected_rps * service))
                } else {
                    String::new()
                },
                format_count(target),
                f.rps_basis
            ),
                None => format!(
                    "{replicas} for {} ongoing / target {} per replica; ongoing requests: {}",
                    format_count(in_service),
                    format_count(target),
                    f.basis
                ),
            };
        Predicted {
            replicas,
            in_service,
            words,
        }
    }

    /// The requests in service that `ongoing` requests, `waiting` of them,
    /// with `rps` finishing (or, through a gateway, arriving) per second ask
    /// for. Once a service time is measured (and `size_from_arrivals`
    /// holds): Little's law (rps × service), as rule 1 sizes, plus those
    /// waiting. Ongoing requests also count the longer service of a fuller
    /// batch, which this leaves to the autoscaler (1–3% fewer GPU-hours on
    /// the simulator's steady kinds); the queue counts whole, since a rise
    /// met short of capacity finishes only what the replicas can, and
    /// without it would be forecast at that capacity, period after period.
    /// Until a service time is measured, the ongoing requests themselves.
    fn in_service(&self, spec: &ScalingSpec, ongoing: f64, rps: f64, waiting: f64) -> f64 {
        self.service_for_demand(spec)
            .map_or(ongoing, |service| rps * service + waiting.max(0.0))
    }

    /// The service time demand is sized with, when it is.
    fn service_for_demand(&self, spec: &ScalingSpec) -> Option<f64> {
        self.autoscaler
            .measured()
            .1
            .filter(|_| spec.size_from_arrivals)
    }

    /// Demand for a model at zero: see [`Autoscaler::wake`].
    pub fn wake(&mut self, now: Instant) {
        self.autoscaler.wake(now);
    }

    /// A replica of the model took `took` from placement to ready.
    pub fn record_start(&mut self, took: Duration) {
        self.autoscaler.record_start(took);
    }

    /// The model's replicas this tick: `(id, ready, since placement)`. A
    /// replica seen loading and now ready measures the start time; one
    /// found ready (adopted after a restart) measures nothing.
    pub fn replicas_seen<'a>(&mut self, replicas: impl Iterator<Item = (&'a str, bool, Duration)>) {
        let mut loading = HashSet::new();
        for (id, ready, age) in replicas {
            if !ready {
                loading.insert(id.to_string());
            } else if self.loading.contains(id) {
                self.autoscaler.record_start(age);
            }
        }
        self.loading = loading;
    }

    /// The forecast's look-ahead: one measured replica start, else the default.
    pub fn horizon(&self, default: Duration) -> i64 {
        let (start, _) = self.autoscaler.measured();
        start
            .map_or(default.as_secs() as i64, |s| s.ceil() as i64)
            .max(1)
    }

    /// The recent relative forecast error, once scored.
    pub fn forecast_error(&self) -> Option<f64> {
        self.score.error()
    }
}

/// Forecasts waiting for their time, and the error of those that came due.
#[derive(Debug, Clone, Default)]
struct ForecastScore {
    /// Whether the forecasts are in requests in service by arrivals
    /// (`Some(true)`) or in ongoing requests; `None` before the first.
    by_arrivals: Option<bool>,
    pending: VecDeque<(i64, f64)>,
    error: Option<f64>,
    scored: u32,
}

impl ForecastScore {
    /// Keeps a forecast for `due`, one per few seconds.
    fn expect(&mut self, due: i64, ongoing: f64) {
        if !ongoing.is_finite() {
            return;
        }
        if self
            .pending
            .back()
            .is_some_and(|(t, _)| due < t + SCORE_EVERY_S)
        {
            return;
        }
        self.pending.push_back((due, ongoing));
    }

    /// Scores the forecasts due by `now` against the demand seen. The error
    /// is relative to the larger of the two and one replica's target, so a
    /// near-idle model's noise is not a large error.
    fn settle(&mut self, now: i64, actual: f64, spec: &ScalingSpec) {
        while self.pending.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, expected)) = self.pending.pop_front() else {
                break;
            };
            let scale = expected.max(actual).max(spec.target_ongoing_requests);
            let e = (expected - actual).abs() / scale;
            self.scored = self.scored.saturating_add(1);
            let a = 1.0 / f64::from(self.scored).min(SCORE_SPAN);
            self.error = Some(self.error.map_or(e, |m| m + a * (e - m)));
        }
    }

    fn error(&self) -> Option<f64> {
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::autoscale::tests::spec;

    /// An hourly job on replicas of 8 slots, in a closed loop: 30 req/s of
    /// 4 s requests for the first 20 minutes of every hour, none for the
    /// other 40. Requests wait for a free slot; replicas asked for are
    /// ready 30 s later. `requests_per_s` is what the replicas finish, as an
    /// agent's scrape reports it (without a gateway): short of capacity, it
    /// is the capacity, not the arrivals. Every step of `hours` hours.
    fn hourly_job(spec: &ScalingSpec, hours: i64) -> Vec<Step> {
        job_loop(spec, hours, false)
    }

    #[test]
    fn an_hourly_job_is_prescaled_for_its_third_rise_with_what_it_serves() {
        let spec = ScalingSpec {
            max_replicas: 40,
            prescale: true,
            ..spec()
        };
        let steps = hourly_job(&spec, 3);
        // Two rises seen (at 0 and 1 h), both met by one replica; the third
        // is 50 s away. One period ago the replicas finished only what one
        // could (2 req/s) while the rest waited: the forecast counts both,
        // not the capacity alone (which would ask for 1 replica again), and
        // all of the rise, not 70% of it (the recent minutes' flat line
        // knows nothing of it).
        let before = &steps[7200 - 30];
        // The forecast has earned its floor (40 quiet minutes forecast
        // right), so the replicas are placed ahead of the rise.
        assert_prescaled_for_the_rise(before);
        let floor = before.predicted.to_string();
        assert!(
            before
                .decision
                .inputs
                .iter()
                .any(|(k, v)| k == "prescale_floor" && *v == floor),
            "{:?}",
            before.decision
        );
        // The decision says what the forecast rests on.
        let forecast = before.decision.inputs.iter().find(|(k, _)| k == "forecast");
        assert!(
            forecast.is_some_and(|(_, v)| v.contains("waiting / target 8 per replica")
                && v.contains("requests per second: one period (")
                && v.contains("ago up to 2;")),
            "{:?}",
            before.decision
        );
        // Ten minutes earlier, nothing is expected yet.
        assert_eq!(steps[7200 - 600].predicted, 1);
        // The third rise, met by its replicas, queued nothing: the fourth is
        // forecast at what it served, 30 req/s × 4 s = 120 at 8 per replica.
        let steps = hourly_job(&spec, 4);
        assert_eq!(
            steps[10800 - 30].predicted,
            15,
            "{:?}",
            steps[10800 - 30].decision
        );

        // With an SLO, at the target the SLO sets for that load, as the
        // autoscaler sized the rise before once its queue was gone.
        let slo = ScalingSpec {
            slo: Some(Duration::from_secs(5)),
            ..spec
        };
        let steps = hourly_job(&slo, 4);
        let during = &steps[7200 + 900].decision;
        let input = |name: &str| {
            during
                .inputs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let target: f64 = input("target_from_slo").unwrap().parse().unwrap();
        assert!(target < 8.0, "{during:?}");
        let desire: f64 = input("stable_desire").unwrap().parse().unwrap();
        assert!(desire > 15.0, "{during:?}");
        assert_eq!(
            f64::from(steps[10800 - 30].predicted),
            desire.ceil(),
            "{during:?}"
        );
    }

    /// The hourly job of [`hourly_job`] behind a gateway, on a model that
    /// scales to zero between runs: the gateway holds what arrives while no
    /// replica is ready, wakes the model, and reports the requests it holds
    /// and those arriving (not the replicas' completions). With nothing held
    /// and none ready it reports nothing.
    fn hourly_job_at_zero(spec: &ScalingSpec, hours: i64) -> Vec<Step> {
        job_loop(spec, hours, true)
    }

    /// The closed loop of [`hourly_job`], or with `gateway` that of
    /// [`hourly_job_at_zero`].
    fn job_loop(spec: &ScalingSpec, hours: i64, gateway: bool) -> Vec<Step> {
        let epoch = Instant::now();
        let mut scaler = ModelScaler::new();
        let (mut current, mut ready) = (1u32, 1u32);
        let mut coming: VecDeque<(i64, u32)> = VecDeque::new();
        let mut in_system = 0.0f64;
        let mut steps = Vec::new();
        for t in 0..hours * 3600 {
            let now = epoch + Duration::from_secs(t as u64);
            while coming.front().is_some_and(|(at, _)| *at <= t) {
                ready = coming.pop_front().map_or(ready, |(_, n)| n);
            }
            ready = ready.min(current);
            let arrivals = if t % 3600 < 1200 { 30.0 } else { 0.0 };
            if gateway {
                // Held at the gateway, and seen arriving there.
                in_system += arrivals;
                if current == 0 && in_system > 0.0 {
                    scaler.wake(now);
                }
            }
            let running = in_system.min(f64::from(ready) * 8.0);
            let finished = running / 4.0;
            let signals = (ready > 0 || in_system > 0.0).then_some(Signals {
                ongoing: in_system,
                waiting: Some(in_system - running),
                ready,
                starting: current - ready,
                requests_per_s: if gateway { arrivals } else { finished },
                measurement: t as u64 + 1,
                ..Signals::default()
            });
            in_system -= finished;
            if gateway {
                // Whole requests: the last one finishes, and the model idles.
                if in_system < 0.5 {
                    in_system = 0.0;
                }
            } else {
                in_system += arrivals;
            }
            let step = scaler.step(
                spec,
                &Tick {
                    now,
                    now_unix_s: 1_700_000_000 - 1_700_000_000 % 3600 + t,
                    signals,
                    current,
                    default_horizon: Duration::from_secs(60),
                    forecast: false,
                },
            );
            let desired = step.decision.desired;
            if desired > current {
                coming.push_back((t + 30, desired));
            } else {
                ready = ready.min(desired);
            }
            current = desired;
            steps.push(step);
        }
        steps
    }

    #[test]
    fn a_job_at_zero_is_sized_from_the_gateways_queue_and_prescaled_from_zero() {
        let spec = ScalingSpec {
            min_replicas: 0,
            max_replicas: 40,
            scale_to_zero_after: Duration::from_secs(300),
            prescale: true,
            ..spec()
        };
        let steps = hourly_job_at_zero(&spec, 3);
        // Idle after each run, the model goes to zero.
        assert_eq!(
            steps[3600 - 60].decision.desired,
            0,
            "{:?}",
            steps[3600 - 60].decision
        );
        // The second run wakes it: the first replica is not ready for 30 s,
        // and the requests the gateway holds meanwhile are demand (30 req/s
        // × 4 s = 120 in service at 8 per replica, with what waits), not
        // news to wait for.
        assert_eq!(steps[3600 - 1].decision.desired, 0);
        let woken = &steps[3600 + 2].decision;
        assert!(woken.desired >= 15, "{woken:?}");
        assert!(woken.reason.contains("req/s × service 4s"), "{woken:?}");
        // The demand history kept the quiet at zero, so the period is known
        // and the third run is pre-scaled from zero, one start ahead.
        assert_eq!(steps[7200 - 120].decision.desired, 0);
        assert_prescaled_for_the_rise(&steps[7200 - 30]);
    }

    /// 30 req/s × 4 s on replicas of 8 slots: at least 15 forecast, and
    /// the count already there.
    fn assert_prescaled_for_the_rise(step: &Step) {
        assert!(step.predicted >= 15, "{:?}", step.decision);
        assert_eq!(step.decision.desired, step.predicted, "{:?}", step.decision);
    }

    #[test]
    fn forecast_errors_are_scored_when_due() {
        let s = spec();
        let mut score = ForecastScore::default();
        score.expect(100, 16.0);
        score.expect(105, 99.0); // within SCORE_EVERY_S: not kept
        score.expect(110, 16.0);
        score.settle(99, 0.0, &s);
        assert_eq!(score.error(), None, "nothing due yet");
        score.settle(100, 16.0, &s);
        assert_eq!(score.error(), Some(0.0));
        score.settle(110, 8.0, &s);
        // |16 − 8| / 16 = 0.5, averaged with the first 0.
        assert_eq!(score.error(), Some(0.25));
        assert_eq!(score.scored, 2);
    }
}
