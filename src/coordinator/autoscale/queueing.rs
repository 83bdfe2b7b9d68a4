//! Per-replica targets from an SLO: how many slots the requests in service
//! need for a request to wait for one rarely (time to first token) or
//! rarely past what the SLO leaves of its time (end to end).

use super::policy::{num, seconds};

/// Standard deviations of the requests in service kept free in slots with a
/// time-to-first-token SLO: every slot is busy at once about 1 time in 700.
pub const TTFT_HEADROOM_SD: f64 = 3.0;

/// A per-replica target from an SLO, and how it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotTarget {
    pub target: f64,
    pub note: String,
}

/// How much longer than an exponential service's a wait for a slot runs,
/// for a time-to-first-token SLO long enough to let requests queue: the
/// Allen–Cunneen factor (1 + cv²) ÷ 2 for service times as spread as
/// heavy-tailed answers (cv² = 3), since the wait a request finds is the
/// rest of the longest service ahead of it.
pub const TTFT_WAIT_SPREAD: f64 = 2.0;

/// The per-replica target that keeps a request's wait for a slot inside a
/// time-to-first-token SLO of `slo_s`, for `concurrent` requests in service
/// on average (arrival rate × service time `service_s`) and `slots` per
/// replica. A request waits for its first token only while every slot is
/// busy. The requests in service at once are about Poisson with that mean
/// whatever the service times' spread (the M/G/∞ queue), so
/// a + [`TTFT_HEADROOM_SD`] × √a slots are all busy rarely (square-root
/// staffing): replicas = that ÷ slots, i.e. a target of slots × a ÷ (a +
/// 3√a). Heavy-tailed requests hold their slots long, so a request that
/// does find them all busy can wait seconds for one; the headroom is what
/// keeps that rare.
///
/// Where the SLO is long enough for the slots to work off that headroom's
/// worth of queue within it (slots × SLO ÷ service per replica at least
/// the target above), requests may queue: the slots are then the servers
/// of the M/M/c queue of [`e2e_target`] with the whole SLO as the wait, a
/// wait [`TTFT_WAIT_SPREAD`] times the exponential's, for 1 request in
/// 1000 to wait past it — that target if looser than the headroom's, and
/// never looser than that queue worked off at full speed (which keeps the
/// target continuous where the branch begins). The caller caps it at the
/// spec's own target.
pub fn ttft_target(slots: f64, concurrent: f64, slo_s: f64, service_s: f64) -> SlotTarget {
    let queue = if service_s > 0.0 {
        slots * slo_s / service_s
    } else {
        slots
    };
    if concurrent <= 0.0 || service_s <= 0.0 {
        return SlotTarget {
            target: queue.min(slots),
            note: format!(
                "no load measured yet: the slots work off a queue of {} per replica within the SLO {}",
                num(queue),
                seconds(slo_s)
            ),
        };
    }
    let needed = concurrent + TTFT_HEADROOM_SD * concurrent.sqrt();
    let free = slots * concurrent / needed;
    let headroom = SlotTarget {
        target: free.min(slots),
        note: format!(
            "{} concurrent need {} + {} × √{} = {} slots for a request to find one free",
            num(concurrent),
            num(concurrent),
            num(TTFT_HEADROOM_SD),
            num(concurrent),
            num(needed)
        ),
    };
    if queue < free {
        return headroom;
    }
    let waiting = erlang_slots(
        concurrent,
        slo_s / service_s / TTFT_WAIT_SPREAD,
        E2E_LATE_SHARE,
    );
    let queued = slots * concurrent / waiting;
    if queued <= free {
        return headroom;
    }
    if queue < queued {
        // No queue drains faster than at full speed throughout: near the
        // gate that bound is the tighter, and the target rises from the
        // headroom's without a step.
        return SlotTarget {
            target: queue.min(slots),
            note: format!(
                "the slots work off a queue of {} per replica within the SLO {}, at full speed throughout",
                num(queue),
                seconds(slo_s)
            ),
        };
    }
    SlotTarget {
        target: queued.min(slots),
        note: format!(
            "{} in service need {} slots for 1 request in {} to wait past the SLO {} (a wait {} times an exponential service's)",
            num(concurrent),
            num(waiting),
            num(1.0 / E2E_LATE_SHARE),
            seconds(slo_s),
            num(TTFT_WAIT_SPREAD)
        ),
    }
}

/// The share of requests whose wait for a slot may outlast what an
/// end-to-end SLO leaves after their service: 1 in 1000.
pub const E2E_LATE_SHARE: f64 = 0.001;

/// The per-replica target that keeps a request's wait for a slot within
/// what an end-to-end SLO of `slo_s` leaves after a `service_s` service, for
/// `concurrent` requests in service on average (arrival rate × service time)
/// and `slots` per replica.
///
/// The slots are the servers of an M/M/c queue offered `concurrent` of load:
/// a request waits with the Erlang C probability, and a wait outlasts `w`
/// with that probability × e^−(c − a)·w / service. The target is the slots
/// scaled by a ÷ c for the fewest slots c that make that at most
/// [`E2E_LATE_SHARE`]. A slack of many service times needs about the load's
/// own slots (a queue drains well within it); a slack of one service time
/// keeps several slots free, as a replica run full has a queue that never
/// settles. Replicas run full only when no load is measured yet.
pub fn e2e_target(slots: f64, concurrent: f64, slo_s: f64, service_s: f64) -> SlotTarget {
    let slack = slo_s - service_s;
    if !(concurrent > 0.0 && slack > 0.0 && service_s > 0.0) {
        return SlotTarget {
            target: slots,
            note: "no load measured yet: every slot".to_string(),
        };
    }
    let needed = erlang_slots(concurrent, slack / service_s, E2E_LATE_SHARE);
    SlotTarget {
        target: slots * concurrent / needed,
        note: format!(
            "{} in service need {} slots for 1 request in {} to wait past the {} the SLO leaves after service",
            num(concurrent),
            num(needed),
            num(1.0 / E2E_LATE_SHARE),
            seconds(slack)
        ),
    }
}

/// Loads (requests in service) searched slot by slot: a fleet's worth.
pub const ERLANG_EXACT_UP_TO: f64 = 100_000.0;

/// The fewest servers `c` for which an M/M/c queue offered `load` (arrival
/// rate × mean service) makes a wait past `slack` mean service times at
/// most `late`: Erlang C(c, load) × e^−(c − load)·slack ≤ late. Erlang B by
/// its recurrence, so the count is exact and no factorial overflows. Since
/// C ≤ 1, `load + ln(1 / late) ÷ slack` servers always suffice: the search
/// stops there. A load beyond [`ERLANG_EXACT_UP_TO`] takes square-root
/// staffing's a + 3√a (or that bound, if fewer) instead of a search that
/// long.
pub fn erlang_slots(load: f64, slack: f64, late: f64) -> f64 {
    let slack = slack.max(0.0);
    let enough = load + (1.0 / late).ln() / slack;
    if load.is_nan() || load <= 0.0 {
        return 0.0;
    }
    if load > ERLANG_EXACT_UP_TO {
        return (load + 3.0 * load.sqrt()).min(enough).ceil();
    }
    let mut blocking = 1.0;
    let mut c = 0.0;
    while c < enough {
        c += 1.0;
        blocking = load * blocking / (c + load * blocking);
        if c > load {
            let waits = blocking / (1.0 - load / c * (1.0 - blocking));
            if waits * (-(c - load) * slack).exp() <= late {
                return c;
            }
        }
    }
    enough
}
