//! GPU health rules: turn samples and Xid events into healthy/unhealthy with a
//! reason. Pure: every decision takes `now`, so the rules are tested on a
//! virtual clock. The rules are documented for operators in docs/telemetry.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::domain::GpuSample;

use super::xid::fatal_xid_name;

/// NVML throttle reasons that mean the hardware itself is slowing the GPU
/// down: HW slowdown (0x8), HW thermal slowdown (0x40) and HW power brake
/// (0x80). Software power capping and idle clocks are normal operation.
pub const HW_SLOWDOWN_REASONS: u64 = 0x8 | 0x40 | 0x80;

/// How long the same Xid reported by two sources (NVML events and the kernel
/// log both see every Xid) counts as one error.
const DUPLICATE_XID_WINDOW: Duration = Duration::from_secs(5);

/// Where an Xid was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidSource {
    NvmlEvent,
    KernelLog,
    Simulated,
}

/// Something a probe noticed between samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuEvent {
    /// An Xid error on the GPU with this index.
    Xid {
        index: u32,
        xid: u32,
        detail: String,
        source: XidSource,
    },
    /// The backend repaired the GPU (simulated faults cleared): forget its
    /// latched faults as an operator's `mark_healthy` would.
    Repaired { index: u32 },
}

/// Tunable thresholds of the health rules.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRules {
    /// Hardware slowdown must last this long before the GPU is unhealthy.
    pub slowdown_after: Duration,
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            slowdown_after: Duration::from_secs(60),
        }
    }
}

/// What the tracker remembers about one GPU between samples.
#[derive(Debug, Default)]
struct GpuHealth {
    /// A fatal Xid: stays until an operator marks the GPU healthy.
    latched: Option<String>,
    xid_errors: u64,
    last_xid: u32,
    last_event: Option<(u32, XidSource, Instant)>,
    slowdown_since: Option<Instant>,
    /// Readings an operator accepted with `mark_healthy`; only worse ones count.
    accepted_double_bit: u64,
    accepted_remap_failure: bool,
    /// The latest readings, so that `mark_healthy` can accept them.
    seen_double_bit: u64,
    seen_remap_failure: bool,
}

/// Applies the health rules to each sample. One tracker per agent.
#[derive(Debug, Default)]
pub struct HealthTracker {
    rules: HealthRules,
    gpus: BTreeMap<u32, GpuHealth>,
}

impl HealthTracker {
    pub fn new(rules: HealthRules) -> Self {
        HealthTracker {
            rules,
            gpus: BTreeMap::new(),
        }
    }

    /// Takes in one event from a probe.
    pub fn record(&mut self, event: GpuEvent, now: Instant) {
        match event {
            GpuEvent::Xid {
                index,
                xid,
                detail,
                source,
            } => self.record_xid(index, xid, &detail, source, now),
            GpuEvent::Repaired { index } => {
                self.mark_healthy(index, now);
            }
        }
    }

    /// Counts an Xid; a fatal one latches the GPU unhealthy.
    pub fn record_xid(
        &mut self,
        index: u32,
        xid: u32,
        detail: &str,
        source: XidSource,
        now: Instant,
    ) {
        let gpu = self.gpus.entry(index).or_default();
        if let Some((last_xid, last_source, at)) = gpu.last_event {
            let duplicate = last_xid == xid
                && last_source != source
                && now.saturating_duration_since(at) < DUPLICATE_XID_WINDOW;
            if duplicate {
                return;
            }
        }
        gpu.last_event = Some((xid, source, now));
        gpu.xid_errors += 1;
        gpu.last_xid = xid;
        match fatal_xid_name(xid) {
            Some(name) => {
                tracing::warn!(
                    gpu = index,
                    xid,
                    detail,
                    "fatal Xid: GPU is unhealthy until an operator marks it healthy"
                );
                gpu.latched = Some(format!("Xid {xid} ({name})"));
            }
            None => tracing::info!(gpu = index, xid, detail, "Xid error (not fatal to the GPU)"),
        }
    }

    /// Operator override: forget latched Xids, accept the current ECC and
    /// row-remap readings (only worse ones count again) and restart the
    /// slowdown clock. Returns false for a GPU the tracker has never seen.
    pub fn mark_healthy(&mut self, index: u32, now: Instant) -> bool {
        let Some(gpu) = self.gpus.get_mut(&index) else {
            return false;
        };
        gpu.latched = None;
        gpu.accepted_double_bit = gpu.seen_double_bit;
        gpu.accepted_remap_failure = gpu.seen_remap_failure;
        if gpu.slowdown_since.is_some() {
            gpu.slowdown_since = Some(now);
        }
        true
    }

    /// Sets `healthy`, `health_reason`, `xid_errors` and `last_xid` on each
    /// sample. A sample the probe already marked unhealthy (GPU lost, reset
    /// required) stays unhealthy with the probe's reason first.
    pub fn apply(&mut self, samples: &mut [GpuSample], now: Instant) {
        for sample in samples.iter_mut() {
            let gpu = self.gpus.entry(sample.index).or_default();
            let mut reasons = Vec::new();
            if !sample.healthy {
                reasons.push(if sample.health_reason.is_empty() {
                    "the GPU does not answer".to_string()
                } else {
                    std::mem::take(&mut sample.health_reason)
                });
            }
            if let Some(latched) = &gpu.latched {
                reasons.push(latched.clone());
            }

            // A field the GPU does not report (or a GPU that does not answer)
            // leaves what was accepted before untouched.
            if let Some(double_bit) = sample.ecc_volatile_double_bit {
                if double_bit < gpu.accepted_double_bit {
                    // The volatile counter restarts with a GPU reset.
                    gpu.accepted_double_bit = double_bit;
                }
                gpu.seen_double_bit = double_bit;
                if double_bit > gpu.accepted_double_bit {
                    reasons.push(format!("{double_bit} volatile double-bit ECC errors"));
                }
            }

            if let Some(remap_failed) = sample.remapped_rows_failed {
                gpu.seen_remap_failure = remap_failed > 0;
                if remap_failed == 0 {
                    gpu.accepted_remap_failure = false;
                } else if !gpu.accepted_remap_failure {
                    reasons.push(format!("row remapping failed ({remap_failed} rows)"));
                }
            }

            if sample.throttle_reasons & HW_SLOWDOWN_REASONS != 0 {
                let since = *gpu.slowdown_since.get_or_insert(now);
                let lasted = now.saturating_duration_since(since);
                if lasted >= self.rules.slowdown_after {
                    reasons.push(format!(
                        "hardware slowdown for {}s (throttle reasons {:#x})",
                        lasted.as_secs(),
                        sample.throttle_reasons
                    ));
                }
            } else {
                gpu.slowdown_since = None;
            }

            sample.healthy = reasons.is_empty();
            sample.health_reason = reasons.join("; ");
            sample.xid_errors = gpu.xid_errors;
            sample.last_xid = gpu.last_xid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_sample(index: u32) -> GpuSample {
        GpuSample {
            index,
            healthy: true,
            ecc_volatile_double_bit: Some(0),
            remapped_rows_failed: Some(0),
            ..GpuSample::default()
        }
    }

    fn check(tracker: &mut HealthTracker, sample: GpuSample, now: Instant) -> GpuSample {
        let mut samples = [sample];
        tracker.apply(&mut samples, now);
        let [sample] = samples;
        sample
    }

    #[test]
    fn fatal_xid_is_sticky_until_an_operator_marks_the_gpu_healthy() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record_xid(
            1,
            79,
            "GPU has fallen off the bus",
            XidSource::KernelLog,
            t0,
        );

        let s = check(&mut tracker, healthy_sample(1), t0);
        assert!(!s.healthy);
        assert_eq!(s.health_reason, "Xid 79 (GPU has fallen off the bus)");
        assert_eq!((s.xid_errors, s.last_xid), (1, 79));

        let later = t0 + Duration::from_secs(3600);
        assert!(!check(&mut tracker, healthy_sample(1), later).healthy);
        assert!(check(&mut tracker, healthy_sample(0), later).healthy);

        assert!(tracker.mark_healthy(1, later));
        let s = check(&mut tracker, healthy_sample(1), later);
        assert!(s.healthy, "{}", s.health_reason);
        assert_eq!(s.xid_errors, 1, "the count survives the override");
    }

    #[test]
    fn application_xids_are_counted_but_not_fatal() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record_xid(
            0,
            13,
            "Graphics SM Warp Exception",
            XidSource::NvmlEvent,
            t0,
        );
        tracker.record_xid(
            0,
            13,
            "Graphics SM Warp Exception",
            XidSource::NvmlEvent,
            t0,
        );
        let s = check(&mut tracker, healthy_sample(0), t0);
        assert!(s.healthy);
        assert_eq!((s.xid_errors, s.last_xid), (2, 13));
    }

    #[test]
    fn the_same_xid_from_nvml_and_the_kernel_log_counts_once() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record_xid(0, 48, "", XidSource::NvmlEvent, t0);
        tracker.record_xid(0, 48, "", XidSource::KernelLog, t0 + Duration::from_secs(1));
        assert_eq!(check(&mut tracker, healthy_sample(0), t0).xid_errors, 1);
        tracker.record_xid(
            0,
            48,
            "",
            XidSource::KernelLog,
            t0 + Duration::from_secs(30),
        );
        assert_eq!(check(&mut tracker, healthy_sample(0), t0).xid_errors, 2);
    }

    #[test]
    fn probe_reported_loss_clears_when_the_gpu_answers_again() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let lost = GpuSample {
            healthy: false,
            health_reason: "GPU is lost".into(),
            ..healthy_sample(2)
        };
        let s = check(&mut tracker, lost, t0);
        assert_eq!(
            (s.healthy, s.health_reason.as_str()),
            (false, "GPU is lost")
        );
        assert!(check(&mut tracker, healthy_sample(2), t0).healthy);
    }

    #[test]
    fn double_bit_errors_stay_until_accepted_and_only_new_ones_count_after() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let dbe = |n| GpuSample {
            ecc_volatile_double_bit: Some(n),
            ..healthy_sample(0)
        };
        let s = check(&mut tracker, dbe(2), t0);
        assert_eq!(s.health_reason, "2 volatile double-bit ECC errors");
        assert!(!check(&mut tracker, dbe(2), t0).healthy);

        tracker.mark_healthy(0, t0);
        assert!(check(&mut tracker, dbe(2), t0).healthy);
        assert!(!check(&mut tracker, dbe(3), t0).healthy);
        // A GPU that stops answering for a while does not lose the acceptance.
        let unanswered = GpuSample {
            ecc_volatile_double_bit: None,
            ..healthy_sample(0)
        };
        assert!(check(&mut tracker, unanswered, t0).healthy);
        tracker.mark_healthy(0, t0);
        assert!(check(&mut tracker, dbe(3), t0).healthy);
        // A GPU reset zeroes the volatile counter: a fresh error counts again.
        assert!(check(&mut tracker, dbe(0), t0).healthy);
        assert!(!check(&mut tracker, dbe(1), t0).healthy);
    }

    #[test]
    fn unsupported_ecc_fields_are_not_unhealthy() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let s = GpuSample {
            ecc_volatile_double_bit: None,
            remapped_rows_failed: None,
            ..healthy_sample(0)
        };
        assert!(check(&mut tracker, s, t0).healthy);
    }

    #[test]
    fn row_remap_failure_is_unhealthy() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let failed = GpuSample {
            remapped_rows_failed: Some(1),
            ..healthy_sample(0)
        };
        let s = check(&mut tracker, failed.clone(), t0);
        assert_eq!(s.health_reason, "row remapping failed (1 rows)");
        tracker.mark_healthy(0, t0);
        assert!(check(&mut tracker, failed, t0).healthy);
    }

    #[test]
    fn hardware_slowdown_must_be_sustained_and_clears_by_itself() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let slow = GpuSample {
            throttle_reasons: 0x8,
            ..healthy_sample(0)
        };
        let at = |s| t0 + Duration::from_secs(s);
        assert!(check(&mut tracker, slow.clone(), at(0)).healthy);
        assert!(check(&mut tracker, slow.clone(), at(59)).healthy);
        let s = check(&mut tracker, slow.clone(), at(60));
        assert!(!s.healthy);
        assert_eq!(
            s.health_reason,
            "hardware slowdown for 60s (throttle reasons 0x8)"
        );

        // The slowdown ends: healthy again, and the clock starts over.
        assert!(check(&mut tracker, healthy_sample(0), at(61)).healthy);
        assert!(check(&mut tracker, slow.clone(), at(62)).healthy);
        assert!(!check(&mut tracker, slow, at(122)).healthy);
    }

    #[test]
    fn software_power_capping_is_normal_operation() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        let capped = GpuSample {
            throttle_reasons: 0x4 | 0x1,
            ..healthy_sample(0)
        };
        check(&mut tracker, capped.clone(), t0);
        assert!(check(&mut tracker, capped, t0 + Duration::from_secs(600)).healthy);
    }

    #[test]
    fn marking_healthy_restarts_the_slowdown_clock() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(HealthRules {
            slowdown_after: Duration::from_secs(10),
        });
        let slow = GpuSample {
            throttle_reasons: 0x40,
            ..healthy_sample(0)
        };
        check(&mut tracker, slow.clone(), t0);
        let t10 = t0 + Duration::from_secs(10);
        assert!(!check(&mut tracker, slow.clone(), t10).healthy);
        tracker.mark_healthy(0, t10);
        assert!(check(&mut tracker, slow.clone(), t10 + Duration::from_secs(5)).healthy);
        assert!(!check(&mut tracker, slow, t10 + Duration::from_secs(10)).healthy);
    }

    #[test]
    fn several_causes_are_all_named() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record_xid(0, 94, "", XidSource::Simulated, t0);
        let s = GpuSample {
            ecc_volatile_double_bit: Some(1),
            ..healthy_sample(0)
        };
        assert_eq!(
            check(&mut tracker, s, t0).health_reason,
            "Xid 94 (contained ECC error); 1 volatile double-bit ECC errors"
        );
    }

    #[test]
    fn repaired_event_acts_like_an_operator_override() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record(
            GpuEvent::Xid {
                index: 0,
                xid: 79,
                detail: String::new(),
                source: XidSource::Simulated,
            },
            t0,
        );
        assert!(!check(&mut tracker, healthy_sample(0), t0).healthy);
        tracker.record(GpuEvent::Repaired { index: 0 }, t0);
        assert!(check(&mut tracker, healthy_sample(0), t0).healthy);
        assert!(!tracker.mark_healthy(7, t0), "unknown GPU");
    }
}
