//! MIG on the NVML backend: each MIG instance of a GPU in MIG mode is listed
//! as a GPU of its own, and the physical GPU stays listed (for its
//! temperature, power, ECC and Xid telemetry) but is never offered for
//! placement. The decisions here are pure functions over plain structs.
//!
//! Index scheme: physical GPUs keep their NVML indices 0..N; MIG instances
//! get N, N+1, ... in order of parent index, then NVML's MIG slot. The
//! indices are fixed when the agent starts: a MIG layout changed later is
//! reported on the instances that vanished, and a restart lists the new one.
//! CUDA addresses a MIG instance only by its `MIG-…` UUID, which the
//! inventory carries.

use std::collections::BTreeMap;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Device;

use crate::domain::{GpuInfo, GpuSample};

use super::super::health::GpuEvent;
use super::{field, unanswered_reason};

/// `NVML_DEVICE_MIG_ENABLE` in nvml.h: MIG mode is on.
const MIG_ENABLED: u32 = 1;

/// What NVML says about one MIG instance when the agent starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MigInstanceFacts {
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
}

/// A physical GPU as read at start, with its MIG instances when MIG mode is
/// current (`None` when MIG is off or not supported).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PhysicalGpu {
    pub info: GpuInfo,
    pub mig: Option<Vec<MigInstanceFacts>>,
}

/// Which physical GPUs are in MIG mode and which indices their instances got.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MigLayout {
    instances: BTreeMap<u32, Vec<u32>>,
}

impl MigLayout {
    /// Whether the GPU `index` is a physical GPU in MIG mode.
    pub fn is_parent(&self, index: u32) -> bool {
        self.instances.contains_key(&index)
    }

    /// The physical GPUs in MIG mode.
    pub fn parents(&self) -> usize {
        self.instances.len()
    }

    /// An Xid on a GPU in MIG mode is also an Xid on each of its instances:
    /// NVML and the kernel log name only the physical GPU, and a fatal Xid
    /// (fallen off the bus, uncorrectable ECC) takes the instances with it.
    /// Conservative for the Xids that touch one instance only: those
    /// instances' replicas are replaced too.
    pub fn fan_out(&self, event: GpuEvent) -> Vec<GpuEvent> {
        let GpuEvent::Xid {
            index,
            xid,
            ref detail,
            source,
        } = event
        else {
            return vec![event];
        };
        let mut events = Vec::new();
        for &instance in self.instances.get(&index).into_iter().flatten() {
            events.push(GpuEvent::Xid {
                index: instance,
                xid,
                detail: format!("{detail} (on its GPU {index})"),
                source,
            });
        }
        events.insert(0, event);
        events
    }

    /// Marks each physical GPU in MIG mode unhealthy so that nothing is placed
    /// on it as a whole, keeping whatever the probe already found wrong.
    pub fn mark_parents(&self, samples: &mut [GpuSample]) {
        for sample in samples.iter_mut() {
            let Some(instances) = self.instances.get(&sample.index) else {
                continue;
            };
            mark_parent(&mut sample.healthy, &mut sample.health_reason, instances);
        }
    }
}

/// Marks a physical GPU in MIG mode unhealthy, its MIG reason first and
/// whatever was already wrong with it after.
fn mark_parent(healthy: &mut bool, health_reason: &mut String, instances: &[u32]) {
    let reason = parent_reason(instances);
    *health_reason = if *healthy {
        reason
    } else {
        format!("{reason}; {health_reason}")
    };
    *healthy = false;
}

/// Why a physical GPU in MIG mode is not offered for placement.
pub(super) fn parent_reason(instances: &[u32]) -> String {
    if instances.is_empty() {
        return "MIG enabled but no MIG instances are configured: nothing can run on it \
                (create instances with `nvidia-smi mig`, then restart the agent)"
            .into();
    }
    let list = instances
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("MIG enabled: use its MIG instances (GPUs {list})")
}

/// The inventory: the physical GPUs first, a physical GPU in MIG mode marked
/// unhealthy with the reason, then each MIG instance as a GPU of its own with
/// an index past the last physical one.
pub(super) fn list_gpus(physical: Vec<PhysicalGpu>) -> (Vec<GpuInfo>, MigLayout) {
    let mut next = physical.iter().map(|p| p.info.index + 1).max().unwrap_or(0);
    let mut layout = MigLayout::default();
    let mut parents = Vec::with_capacity(physical.len());
    let mut instances = Vec::new();
    for PhysicalGpu { info, mig } in physical {
        if let Some(facts) = mig {
            let indices = layout.instances.entry(info.index).or_default();
            for fact in facts {
                indices.push(next);
                instances.push(GpuInfo {
                    index: next,
                    uuid: fact.uuid,
                    name: fact.name,
                    memory_total_bytes: fact.memory_total_bytes,
                    pci_bus_id: info.pci_bus_id.clone(),
                    healthy: true,
                    health_reason: String::new(),
                    mig_parent: Some(info.index),
                });
                next += 1;
            }
        }
        parents.push(info);
    }
    for info in &mut parents {
        if let Some(indices) = layout.instances.get(&info.index) {
            mark_parent(&mut info.healthy, &mut info.health_reason, indices);
        }
    }
    parents.extend(instances);
    (parents, layout)
}

/// An instance shares its GPU's memory chips, clocks and power: the parent's
/// ECC, row-remapping and throttle readings are the instance's too, so the
/// same health rules judge it. Temperature and power stay on the parent's
/// row only (summing them over instances would count them twice).
pub(super) fn inherit_parent(instance: &mut GpuSample, parent: &GpuSample) {
    instance.throttle_reasons |= parent.throttle_reasons;
    instance.ecc_volatile_single_bit = instance
        .ecc_volatile_single_bit
        .or(parent.ecc_volatile_single_bit);
    instance.ecc_volatile_double_bit = instance
        .ecc_volatile_double_bit
        .or(parent.ecc_volatile_double_bit);
    instance.remapped_rows_pending = instance
        .remapped_rows_pending
        .or(parent.remapped_rows_pending);
    instance.remapped_rows_failed = instance
        .remapped_rows_failed
        .or(parent.remapped_rows_failed);
}

/// The MIG instances of the physical GPU `device` when its MIG mode is
/// current; `Err` when the GPU itself is gone.
pub(super) fn read_instances(
    device: &Device<'_>,
    parent: u32,
) -> Result<Option<Vec<MigInstanceFacts>>, String> {
    let mig_enabled = field(device.mig_mode())?.is_some_and(|m| m.current == MIG_ENABLED);
    if !mig_enabled {
        return Ok(None);
    }
    // NVML's count is the most instances the GPU can hold; the slots in
    // between may be empty.
    let slots = field(device.mig_device_count())?.unwrap_or(0);
    let mut instances = Vec::new();
    for slot in 0..slots {
        let instance = match device.mig_device_by_index(slot) {
            Ok(instance) => instance,
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(err) => {
                if let Some(reason) = unanswered_reason(&err) {
                    return Err(reason);
                }
                tracing::warn!(gpu = parent, slot, error = %err, "NVML cannot open this MIG instance; it is not listed");
                continue;
            }
        };
        let Some(uuid) = field(instance.uuid())? else {
            tracing::warn!(
                gpu = parent,
                slot,
                "MIG instance without a UUID (CUDA cannot address it); not listed"
            );
            continue;
        };
        instances.push(MigInstanceFacts {
            uuid,
            name: field(instance.name())?.unwrap_or_default(),
            memory_total_bytes: field(instance.memory_info())?.map_or(0, |m| m.total),
        });
    }
    Ok(Some(instances))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::super::health::{HealthRules, HealthTracker, XidSource};
    use super::*;

    const GIB: u64 = 1 << 30;

    fn physical(index: u32, mig: Option<Vec<MigInstanceFacts>>) -> PhysicalGpu {
        PhysicalGpu {
            info: GpuInfo {
                index,
                uuid: format!("GPU-{index}"),
                name: "NVIDIA H200".into(),
                memory_total_bytes: 141 * GIB,
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index),
                healthy: true,
                health_reason: String::new(),
                mig_parent: None,
            },
            mig,
        }
    }

    fn instance(uuid: &str, gib: u64) -> MigInstanceFacts {
        MigInstanceFacts {
            uuid: uuid.into(),
            name: "NVIDIA H200 MIG 1g.18gb".into(),
            memory_total_bytes: gib * GIB,
        }
    }

    #[test]
    fn mig_instances_get_indices_past_the_physical_gpus_in_parent_order() {
        let (gpus, layout) = list_gpus(vec![
            physical(0, None),
            physical(1, Some(vec![instance("MIG-a", 18), instance("MIG-b", 35)])),
            physical(2, None),
            physical(3, Some(vec![instance("MIG-c", 71)])),
        ]);
        let rows: Vec<(u32, &str, Option<u32>, bool)> = gpus
            .iter()
            .map(|g| (g.index, g.uuid.as_str(), g.mig_parent, g.healthy))
            .collect();
        assert_eq!(
            rows,
            [
                (0, "GPU-0", None, true),
                (1, "GPU-1", None, false),
                (2, "GPU-2", None, true),
                (3, "GPU-3", None, false),
                (4, "MIG-a", Some(1), true),
                (5, "MIG-b", Some(1), true),
                (6, "MIG-c", Some(3), true),
            ]
        );
        // An instance is addressed by its own name, memory and UUID, and sits
        // at its parent's PCI address (where kernel-log Xids name it).
        assert_eq!(gpus[5].name, "NVIDIA H200 MIG 1g.18gb");
        assert_eq!(gpus[5].memory_total_bytes, 35 * GIB);
        assert_eq!(gpus[5].pci_bus_id, gpus[1].pci_bus_id);
        assert_eq!(
            gpus[1].health_reason,
            "MIG enabled: use its MIG instances (GPUs 4, 5)"
        );
        assert!(layout.is_parent(1) && layout.is_parent(3) && !layout.is_parent(0));
        assert_eq!(layout.parents(), 2);
    }

    #[test]
    fn a_mig_gpu_without_instances_is_not_offered_and_says_what_to_do() {
        let (gpus, layout) = list_gpus(vec![physical(0, Some(Vec::new()))]);
        assert_eq!(gpus.len(), 1);
        assert!(!gpus[0].healthy);
        assert!(
            gpus[0].health_reason.contains("nvidia-smi mig"),
            "{}",
            gpus[0].health_reason
        );
        assert!(layout.is_parent(0));
    }

    #[test]
    fn a_parent_that_was_already_unhealthy_keeps_its_reason() {
        let mut gpu = physical(0, Some(vec![instance("MIG-a", 18)]));
        gpu.info.healthy = false;
        gpu.info.health_reason = "GPU requires a reset".into();
        let (gpus, _) = list_gpus(vec![gpu]);
        assert_eq!(
            gpus[0].health_reason,
            "MIG enabled: use its MIG instances (GPUs 1); GPU requires a reset"
        );
    }

    #[test]
    fn without_mig_the_inventory_is_the_physical_gpus_unchanged() {
        let input = vec![physical(0, None), physical(1, None)];
        let expected: Vec<GpuInfo> = input.iter().map(|p| p.info.clone()).collect();
        let (gpus, layout) = list_gpus(input);
        assert_eq!(gpus, expected);
        assert_eq!(layout, MigLayout::default());
    }

    #[test]
    fn parent_samples_are_unhealthy_and_instance_samples_are_not_touched() {
        let (_, layout) = list_gpus(vec![
            physical(0, Some(vec![instance("MIG-a", 18)])),
            physical(1, None),
        ]);
        let healthy = |index| GpuSample {
            index,
            healthy: true,
            ..GpuSample::default()
        };
        let mut samples = vec![healthy(0), healthy(1), healthy(2)];
        layout.mark_parents(&mut samples);
        let health: Vec<(bool, &str)> = samples
            .iter()
            .map(|s| (s.healthy, s.health_reason.as_str()))
            .collect();
        assert_eq!(
            health,
            [
                (false, "MIG enabled: use its MIG instances (GPUs 2)"),
                (true, ""),
                (true, ""),
            ]
        );
    }

    #[test]
    fn an_xid_on_a_mig_gpu_reaches_each_of_its_instances() {
        let (_, layout) = list_gpus(vec![
            physical(0, None),
            physical(1, Some(vec![instance("MIG-a", 18), instance("MIG-b", 18)])),
        ]);
        let xid = |index| GpuEvent::Xid {
            index,
            xid: 79,
            detail: "kernel log".into(),
            source: XidSource::KernelLog,
        };
        let indices = |events: Vec<GpuEvent>| -> Vec<u32> {
            events
                .iter()
                .map(|e| match e {
                    GpuEvent::Xid { index, .. } | GpuEvent::Repaired { index } => *index,
                })
                .collect()
        };
        assert_eq!(indices(layout.fan_out(xid(1))), [1, 2, 3]);
        assert_eq!(indices(layout.fan_out(xid(0))), [0]);
        assert_eq!(
            layout.fan_out(GpuEvent::Repaired { index: 1 }),
            [GpuEvent::Repaired { index: 1 }]
        );
        let GpuEvent::Xid { detail, .. } = &layout.fan_out(xid(1))[1] else {
            panic!("an Xid fans out as Xids");
        };
        assert_eq!(detail, "kernel log (on its GPU 1)");
    }

    #[test]
    fn an_instance_takes_its_gpus_memory_and_clock_health_but_not_its_power() {
        let parent = GpuSample {
            index: 0,
            throttle_reasons: 0x40,
            ecc_volatile_double_bit: Some(2),
            remapped_rows_failed: Some(1),
            temperature_c: Some(71.0),
            power_w: Some(500.0),
            ..GpuSample::default()
        };
        let mut mig = GpuSample {
            index: 1,
            memory_used_bytes: 3 * GIB,
            memory_total_bytes: 18 * GIB,
            throttle_reasons: 0x1,
            ..GpuSample::default()
        };
        inherit_parent(&mut mig, &parent);
        assert_eq!(mig.throttle_reasons, 0x41);
        assert_eq!(mig.ecc_volatile_double_bit, Some(2));
        assert_eq!(mig.remapped_rows_failed, Some(1));
        assert_eq!(mig.ecc_volatile_single_bit, None);
        assert_eq!((mig.temperature_c, mig.power_w), (None, None));
        assert_eq!(
            (mig.memory_used_bytes, mig.memory_total_bytes),
            (3 * GIB, 18 * GIB)
        );
    }

    #[test]
    fn the_health_rules_judge_instances_by_their_gpu_and_never_offer_the_parent() {
        // As the sampler runs them: probe samples, fanned-out events, tracker.
        let (_, layout) = list_gpus(vec![physical(
            0,
            Some(vec![instance("MIG-a", 18), instance("MIG-b", 18)]),
        )]);
        let now = Instant::now();
        let mut tracker = HealthTracker::new(HealthRules::default());
        let sample = |index| GpuSample {
            index,
            healthy: true,
            ecc_volatile_double_bit: Some(0),
            ..GpuSample::default()
        };
        let probe = |layout: &MigLayout, double_bit: u64| {
            let mut parent = sample(0);
            parent.ecc_volatile_double_bit = Some(double_bit);
            let mut samples = vec![parent.clone(), sample(1), sample(2)];
            for mig in &mut samples[1..] {
                mig.ecc_volatile_double_bit = None;
                inherit_parent(mig, &parent);
            }
            layout.mark_parents(&mut samples);
            samples
        };

        let mut samples = probe(&layout, 0);
        tracker.apply(&mut samples, now);
        let healthy: Vec<bool> = samples.iter().map(|s| s.healthy).collect();
        assert_eq!(healthy, [false, true, true]);
        // An operator vouching for the parent does not make it placeable.
        assert!(tracker.mark_healthy(0, now));
        let mut samples = probe(&layout, 0);
        tracker.apply(&mut samples, now);
        assert!(samples[0].health_reason.starts_with("MIG enabled"));

        // A double-bit ECC error on the GPU's memory reaches both instances.
        let mut samples = probe(&layout, 3);
        tracker.apply(&mut samples, now);
        assert_eq!(samples[2].health_reason, "3 volatile double-bit ECC errors");
        assert!(!samples[1].healthy);

        // A fatal Xid named on the physical GPU latches on its instances.
        let mut tracker = HealthTracker::new(HealthRules::default());
        for event in layout.fan_out(GpuEvent::Xid {
            index: 0,
            xid: 79,
            detail: String::new(),
            source: XidSource::KernelLog,
        }) {
            tracker.record(event, now);
        }
        let mut samples = probe(&layout, 0);
        tracker.apply(&mut samples, now);
        assert!(samples[1..]
            .iter()
            .all(|s| !s.healthy && s.health_reason.contains("Xid 79")));
    }
}
