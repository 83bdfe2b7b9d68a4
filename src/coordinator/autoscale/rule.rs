//! Which rule decided a model's replica count: typed, so that the simulator,
//! tests and `explain` compare and show it without parsing prose.

use std::fmt;

/// The rule behind one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `model scale --replicas N` pinned the count.
    Pinned,
    /// No `[scaling]`: the spec's fixed `replicas`.
    Fixed,
    /// At zero, waiting for a wake or a prediction.
    AtZero,
    AboveMaximum,
    BelowMinimum,
    /// The forecast's floor, while the forecast has been accurate.
    Prescale,
    Woken,
    /// No fresh signals: hold rather than act on missing data.
    NoSignals,
    /// Replicas are starting; none is ready to measure load yet.
    NotMeasured,
    /// The stable window's demand (scale up or hold).
    Steady,
    /// A burst: the panic window or the newest samples asked for more.
    Panic,
    /// Holding while panic mode lasts.
    PanicHold,
    /// A panic sized for the arrival rate one start ahead, while it climbs.
    RisingRate,
    /// The backlog drains at the current capacity before a new replica could
    /// be ready: none is started.
    BacklogDrains,
    /// Capacity kept for recurring bursts, or a panic bounded by what
    /// serves a burst within the SLO.
    BurstMemory,
    /// A queue that has stood longer than a start plus the SLO's queue
    /// wait: the cold-start rule and the burst memory's bound are lifted.
    StandingQueue,
    /// A change within the tolerance.
    Tolerance,
    /// Lower desire, waiting out the scale-down delay.
    ScaleDownWait,
    /// Lower desire held by a higher one within the delay.
    ScaleDownHeld,
    /// Lower desire held: the newest arrivals are well above the stable
    /// window's, whose average lags a rise.
    ArrivalsAboveStable,
    ScaleDown,
    /// A configured signal is missing: no scale-down on partial signals.
    MissingSignals,
    ScaleToZero,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Pinned => "pinned",
            Rule::Fixed => "fixed",
            Rule::AtZero => "at-zero",
            Rule::AboveMaximum => "above-maximum",
            Rule::BelowMinimum => "below-minimum",
            Rule::Prescale => "prescale",
            Rule::Woken => "woken",
            Rule::NoSignals => "no-signals",
            Rule::NotMeasured => "not-measured",
            Rule::Steady => "steady",
            Rule::Panic => "panic",
            Rule::PanicHold => "panic-hold",
            Rule::RisingRate => "rising-rate",
            Rule::BacklogDrains => "cold-start-aware",
            Rule::BurstMemory => "burst-memory",
            Rule::StandingQueue => "standing-queue",
            Rule::Tolerance => "tolerance",
            Rule::ScaleDownWait => "scale-down-wait",
            Rule::ScaleDownHeld => "scale-down-held",
            Rule::ArrivalsAboveStable => "arrivals-above-stable",
            Rule::ScaleDown => "scale-down",
            Rule::MissingSignals => "missing-signals",
            Rule::ScaleToZero => "scale-to-zero",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
