//! NVML backend: real NVIDIA GPUs through libnvidia-ml.so.1, loaded at run
//! time (nothing NVIDIA is needed to build or test the agent). One GPU that
//! stops answering is reported unhealthy; the others keep being sampled.
//!
//! A GPU in MIG mode is listed with each of its MIG instances as a GPU of its
//! own (see `mig`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_ECC_DBE_VOL_TOTAL, NVML_FI_DEV_ECC_SBE_VOL_TOTAL, NVML_FI_DEV_MEMORY_TEMP,
    NVML_FI_DEV_PCIE_REPLAY_COUNTER, NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE,
    NVML_FI_DEV_REMAPPED_PENDING, NVML_FI_DEV_REMAPPED_UNC, NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
};
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Device, Nvml};

use crate::domain::{GpuDetail, GpuInfo, GpuProcess, GpuSample};

use super::health::{GpuEvent, XidSource};
use super::kmsg::{KmsgReader, StartAt, KERNEL_LOG};
use super::nvml_events::NvmlEventWatcher;
use super::xid::PciAddress;
use super::{unanswered_sample, GpuProbe, ProbeError, NVML_LIBRARY};

mod mig;

use mig::{MigLayout, PhysicalGpu};

/// Fields read in one `nvmlDeviceGetFieldValues` call, in this order.
const FIELDS: [FieldId; 9] = [
    FieldId(NVML_FI_DEV_ECC_SBE_VOL_TOTAL),
    FieldId(NVML_FI_DEV_ECC_DBE_VOL_TOTAL),
    FieldId(NVML_FI_DEV_REMAPPED_PENDING),
    FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    FieldId(NVML_FI_DEV_REMAPPED_COR),
    FieldId(NVML_FI_DEV_REMAPPED_UNC),
    FieldId(NVML_FI_DEV_MEMORY_TEMP),
    FieldId(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
    FieldId(NVML_FI_DEV_PCIE_REPLAY_COUNTER),
];

/// The process list and PCIe throughput are slow NVML calls (the PCIe
/// counter alone samples for 20 ms per direction), so they are refreshed on
/// every 5th sample or once 5 s have passed, whichever comes first, and
/// reused in between.
const SLOW_EVERY_SAMPLES: u32 = 5;
const SLOW_EVERY: Duration = Duration::from_secs(5);

pub struct NvmlGpus {
    nvml: Arc<Nvml>,
    gpus: Vec<GpuInfo>,
    mig: MigLayout,
    driver_version: String,
    cuda_version: String,
    slow: SlowCadence,
    slow_fields: BTreeMap<u32, SlowFields>,
    /// GPUs that did not answer the last sample, to log transitions only.
    unanswered: BTreeSet<u32>,
    events: mpsc::Receiver<GpuEvent>,
    _nvml_events: Option<NvmlEventWatcher>,
    _kernel_log: Option<KmsgReader>,
}

#[derive(Debug, Default, Clone)]
struct SlowFields {
    processes: Vec<GpuProcess>,
    pcie_rx_bytes_per_s: Option<u64>,
    pcie_tx_bytes_per_s: Option<u64>,
}

impl NvmlGpus {
    /// Loads NVML and reads the inventory. Starts the NVML Xid event thread
    /// and the kernel log reader where they are available.
    pub fn open() -> Result<NvmlGpus, ProbeError> {
        let nvml = Nvml::init().map_err(|err| ProbeError::LibraryUnavailable {
            library: NVML_LIBRARY,
            reason: err.to_string(),
        })?;
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let cuda_version = nvml
            .sys_cuda_driver_version()
            .map(|v| {
                format!(
                    "{}.{}",
                    cuda_driver_version_major(v),
                    cuda_driver_version_minor(v)
                )
            })
            .unwrap_or_default();
        let count = nvml.device_count().map_err(|err| ProbeError::Nvml {
            what: "counting the GPUs".into(),
            reason: err.to_string(),
        })?;
        let (gpus, mig) = mig::list_gpus((0..count).map(|index| read_info(&nvml, index)).collect());
        tracing::info!(
            gpus = count,
            mig_gpus = mig.parents(),
            mig_instances = gpus.len().saturating_sub(count as usize),
            driver = %driver_version,
            cuda = %cuda_version,
            "NVML loaded"
        );

        let nvml = Arc::new(nvml);
        let (events_tx, events) = mpsc::channel();
        // Xids name physical GPUs only (MIG instances share their parent's PCI
        // address); `take_events` passes them on to the instances.
        let physical = || gpus.iter().filter(|g| g.mig_parent.is_none());
        let indices = physical().map(|g| g.index).collect();
        let nvml_events = NvmlEventWatcher::spawn(Arc::clone(&nvml), indices, events_tx.clone());
        let by_pci: HashMap<PciAddress, u32> = physical()
            .filter_map(|g| Some((PciAddress::parse(&g.pci_bus_id)?, g.index)))
            .collect();
        let kernel_log = KmsgReader::spawn(KERNEL_LOG, StartAt::End, move |x| {
            match by_pci.get(&x.pci) {
                Some(&index) => {
                    let _ = events_tx.send(GpuEvent::Xid {
                        index,
                        xid: x.xid,
                        detail: x.detail,
                        source: XidSource::KernelLog,
                    });
                }
                None => {
                    tracing::info!(pci = %x.pci, xid = x.xid, "Xid on a PCI device that is not one of this agent's GPUs")
                }
            }
        });

        Ok(NvmlGpus {
            nvml,
            gpus,
            mig,
            driver_version,
            cuda_version,
            slow: SlowCadence::default(),
            slow_fields: BTreeMap::new(),
            unanswered: BTreeSet::new(),
            events,
            _nvml_events: nvml_events,
            _kernel_log: kernel_log,
        })
    }
}

impl GpuProbe for NvmlGpus {
    fn backend(&self) -> &'static str {
        "nvml"
    }

    fn inventory(&mut self) -> Vec<GpuInfo> {
        self.gpus.clone()
    }

    fn sample(&mut self) -> Vec<GpuSample> {
        let refresh_slow = self.slow.due(Instant::now());
        let nvml = &*self.nvml;
        let mut samples: Vec<GpuSample> = Vec::with_capacity(self.gpus.len());
        for info in &self.gpus {
            let slow = self.slow_fields.entry(info.index).or_default();
            let read = match info.mig_parent {
                None => {
                    let kind = if self.mig.is_parent(info.index) {
                        Handle::MigParent
                    } else {
                        Handle::Gpu
                    };
                    read_sample(nvml, info, kind, refresh_slow, slow)
                }
                // Physical GPUs come first in the inventory, so the parent's
                // sample (not yet marked for MIG) is already taken.
                Some(parent) => match samples.iter().find(|s| s.index == parent) {
                    Some(p) if !p.healthy => Err(format!(
                        "its GPU {parent} does not answer: {}",
                        p.health_reason
                    )),
                    p => read_sample(nvml, info, Handle::MigInstance, refresh_slow, slow).map(
                        |mut sample| {
                            if let Some(p) = p {
                                mig::inherit_parent(&mut sample, p);
                            }
                            sample
                        },
                    ),
                },
            };
            match read {
                Ok(sample) => {
                    if self.unanswered.remove(&info.index) {
                        tracing::info!(gpu = info.index, "GPU answers NVML again");
                    }
                    samples.push(sample);
                }
                Err(reason) => {
                    if self.unanswered.insert(info.index) {
                        tracing::warn!(gpu = info.index, uuid = %info.uuid, %reason, "GPU does not answer NVML");
                    }
                    samples.push(unanswered_sample(
                        info.index,
                        info.memory_total_bytes,
                        reason,
                    ));
                }
            }
        }
        self.mig.mark_parents(&mut samples);
        samples
    }

    fn versions(&self) -> (String, String) {
        (self.driver_version.clone(), self.cuda_version.clone())
    }

    fn take_events(&mut self) -> Vec<GpuEvent> {
        let mig = &self.mig;
        self.events
            .try_iter()
            .flat_map(|event| mig.fan_out(event))
            .collect()
    }
}

/// Decides when the slow fields are read again.
#[derive(Debug, Default)]
struct SlowCadence {
    samples_since: u32,
    last: Option<Instant>,
}

impl SlowCadence {
    fn due(&mut self, now: Instant) -> bool {
        let due = match self.last {
            None => true,
            Some(last) => {
                self.samples_since + 1 >= SLOW_EVERY_SAMPLES
                    || now.saturating_duration_since(last) >= SLOW_EVERY
            }
        };
        if due {
            self.samples_since = 0;
            self.last = Some(now);
        } else {
            self.samples_since += 1;
        }
        due
    }
}

/// The reason a GPU cannot be sampled at all, for the NVML errors that mean
/// the device is gone rather than that one field is unsupported.
fn unanswered_reason(err: &NvmlError) -> Option<String> {
    match err {
        NvmlError::GpuLost => Some(
            "GPU is lost: it has fallen off the bus or is otherwise inaccessible (NVML GPU_IS_LOST)"
                .into(),
        ),
        NvmlError::ResetRequired => Some("GPU requires a reset (NVML RESET_REQUIRED)".into()),
        _ => None,
    }
}

/// `Ok(None)` for a field this GPU does not report, `Err(reason)` when the
/// GPU itself is gone.
fn field<T>(result: Result<T, NvmlError>) -> Result<Option<T>, String> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) => match unanswered_reason(&err) {
            Some(reason) => Err(reason),
            None => {
                if !matches!(err, NvmlError::NotSupported) {
                    tracing::debug!(error = %err, "NVML field unavailable");
                }
                Ok(None)
            }
        },
    }
}

/// The NVML handle behind an inventory entry, which decides what is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handle {
    /// A physical GPU not in MIG mode.
    Gpu,
    /// A physical GPU in MIG mode: its process list is the aggregate of its
    /// instances', so it is left to them (read twice, memory would be
    /// attributed twice).
    MigParent,
    /// A MIG instance, opened by its UUID: memory and processes are its own;
    /// clocks, power, temperature, ECC and PCIe belong to the physical GPU.
    MigInstance,
}

fn read_info(nvml: &Nvml, index: u32) -> PhysicalGpu {
    let unhealthy = |reason: String| PhysicalGpu {
        info: GpuInfo {
            index,
            healthy: false,
            health_reason: reason,
            ..GpuInfo::default()
        },
        mig: None,
    };
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(err) => {
            let reason = unanswered_reason(&err)
                .unwrap_or_else(|| format!("NVML cannot open the GPU: {err}"));
            tracing::warn!(gpu = index, %reason, "GPU missing from the inventory");
            return unhealthy(reason);
        }
    };
    let read = || -> Result<PhysicalGpu, String> {
        let info = GpuInfo {
            index,
            uuid: field(device.uuid())?.unwrap_or_default(),
            name: field(device.name())?.unwrap_or_default(),
            memory_total_bytes: field(device.memory_info())?.map_or(0, |m| m.total),
            pci_bus_id: field(device.pci_info())?
                .map(|p| p.bus_id)
                .unwrap_or_default(),
            healthy: true,
            health_reason: String::new(),
            mig_parent: None,
        };
        let mig = mig::read_instances(&device, index)?;
        if let Some(instances) = &mig {
            tracing::info!(
                gpu = index,
                instances = instances.len(),
                "GPU is in MIG mode: its MIG instances are listed as GPUs of their own"
            );
        }
        Ok(PhysicalGpu { info, mig })
    };
    read().unwrap_or_else(unhealthy)
}

fn read_sample(
    nvml: &Nvml,
    info: &GpuInfo,
    kind: Handle,
    refresh_slow: bool,
    slow: &mut SlowFields,
) -> Result<GpuSample, String> {
    let device = match kind {
        Handle::Gpu | Handle::MigParent => nvml.device_by_index(info.index),
        Handle::MigInstance => nvml.device_by_uuid(info.uuid.as_str()),
    };
    let device = device.map_err(|err| match (&err, kind) {
        (NvmlError::NotFound, Handle::MigInstance) => format!(
            "MIG instance {} no longer exists: the MIG layout changed since the agent started; restart the agent to list the current instances",
            info.uuid
        ),
        _ => unanswered_reason(&err).unwrap_or_else(|| format!("NVML cannot open the GPU: {err}")),
    })?;
    let memory = field(device.memory_info())?;
    // NVML reports no utilization for MIG instances nor for a GPU in MIG
    // mode (NOT_SUPPORTED): it reads 0.
    let utilization = field(device.utilization_rates())?;
    if refresh_slow {
        *slow = read_slow(&device, kind)?;
    }
    let mut sample = GpuSample {
        index: info.index,
        memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
        memory_total_bytes: memory.map_or(info.memory_total_bytes, |m| m.total),
        utilization_pct: utilization.as_ref().map_or(0.0, |u| f64::from(u.gpu)),
        memory_utilization_pct: utilization.map_or(0.0, |u| f64::from(u.memory)),
        pcie_rx_bytes_per_s: slow.pcie_rx_bytes_per_s,
        pcie_tx_bytes_per_s: slow.pcie_tx_bytes_per_s,
        healthy: true,
        health_reason: String::new(),
        processes: slow.processes.clone(),
        ..GpuSample::default()
    };
    if kind != Handle::MigInstance {
        read_physical(&device, &mut sample)?;
    }
    Ok(sample)
}

/// What only a physical GPU reports: temperature, power, clocks, ECC,
/// row remapping, energy, PCIe replays, video engines.
fn read_physical(device: &Device<'_>, sample: &mut GpuSample) -> Result<(), String> {
    let [single_bit, double_bit, remap_pending, remap_failed, remap_cor, remap_unc, mem_temp, energy, replays] =
        read_fields(device)?;
    sample.detail = GpuDetail {
        mem_clock_mhz: field(device.clock_info(Clock::Memory))?,
        memory_temperature_c: mem_temp.map(|t| t as f64),
        energy_mj: energy,
        pcie_replays: replays,
        encoder_pct: field(device.encoder_utilization())?.map(|u| f64::from(u.utilization)),
        decoder_pct: field(device.decoder_utilization())?.map(|u| f64::from(u.utilization)),
        remapped_rows_correctable: remap_cor,
        remapped_rows_uncorrectable: remap_unc,
    };
    sample.temperature_c = field(device.temperature(TemperatureSensor::Gpu))?.map(f64::from);
    sample.power_w = field(device.power_usage())?.map(milliwatts);
    sample.power_limit_w = field(device.enforced_power_limit())?.map(milliwatts);
    sample.sm_clock_mhz = field(device.clock_info(Clock::SM))?;
    sample.throttle_reasons = field(device.current_throttle_reasons())?.map_or(0, |r| r.bits());
    sample.ecc_volatile_single_bit = single_bit;
    sample.ecc_volatile_double_bit = double_bit;
    sample.remapped_rows_pending = remap_pending.map(saturate_u32);
    sample.remapped_rows_failed = remap_failed.map(saturate_u32);
    Ok(())
}

/// ECC volatile totals, row-remap state and counts, memory temperature,
/// energy and PCIe replays, one NVML call.
fn read_fields(device: &Device<'_>) -> Result<[Option<u64>; FIELDS.len()], String> {
    let mut values = [None; FIELDS.len()];
    let Some(samples) = field(device.field_values_for(&FIELDS))? else {
        return Ok(values);
    };
    for sample in samples {
        let Some(sample) = field(sample)? else {
            continue;
        };
        let Some(slot) = FIELDS.iter().position(|f| f.0 == sample.field.0) else {
            continue;
        };
        values[slot] = field(sample.value)?.and_then(|v| sample_u64(&v));
    }
    Ok(values)
}

fn read_slow(device: &Device<'_>, kind: Handle) -> Result<SlowFields, String> {
    let processes = match kind {
        Handle::MigParent => None,
        Handle::Gpu | Handle::MigInstance => field(device.running_compute_processes())?,
    };
    let processes = processes
        .unwrap_or_default()
        .into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_memory_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes,
                UsedGpuMemory::Unavailable => 0,
            },
        })
        .collect();
    if kind == Handle::MigInstance {
        return Ok(SlowFields {
            processes,
            ..SlowFields::default()
        });
    }
    let kib_per_s = |kib: u32| u64::from(kib) * 1024;
    Ok(SlowFields {
        processes,
        pcie_rx_bytes_per_s: field(device.pcie_throughput(PcieUtilCounter::Receive))?
            .map(kib_per_s),
        pcie_tx_bytes_per_s: field(device.pcie_throughput(PcieUtilCounter::Send))?.map(kib_per_s),
    })
}

fn sample_u64(value: &SampleValue) -> Option<u64> {
    match *value {
        SampleValue::U32(v) => Some(u64::from(v)),
        SampleValue::U64(v) => Some(v),
        SampleValue::I64(v) => u64::try_from(v).ok(),
        SampleValue::F64(v) if v >= 0.0 && v.is_finite() => Some(v as u64),
        SampleValue::F64(_) => None,
    }
}

fn milliwatts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_driver_names_the_library_and_does_not_panic() {
        // The machines that run the test suite have no NVIDIA driver; on one
        // that does, opening must succeed instead.
        match NvmlGpus::open() {
            Err(ProbeError::LibraryUnavailable { library, reason }) => {
                assert_eq!(library, "libnvidia-ml.so.1");
                assert!(!reason.is_empty());
                let message = ProbeError::LibraryUnavailable { library, reason }.to_string();
                eprintln!("{message}");
                assert!(message.contains("libnvidia-ml.so.1"), "{message}");
                assert!(message.contains("--gpu-backend simulated"), "{message}");
            }
            Err(other) => panic!("unexpected error kind: {other}"),
            Ok(mut gpus) => {
                eprintln!("NVIDIA driver present: checking a real sample instead");
                let inventory = gpus.inventory();
                assert_eq!(gpus.sample().len(), inventory.len());
            }
        }
    }

    #[test]
    fn gone_gpus_are_errors_and_unsupported_fields_are_none() {
        assert_eq!(field::<u32>(Err(NvmlError::NotSupported)), Ok(None));
        assert_eq!(field::<u32>(Err(NvmlError::NoPermission)), Ok(None));
        assert_eq!(field(Ok(7u32)), Ok(Some(7)));
        let lost = field::<u32>(Err(NvmlError::GpuLost)).unwrap_err();
        assert!(lost.contains("fallen off the bus"), "{lost}");
        let reset = field::<u32>(Err(NvmlError::ResetRequired)).unwrap_err();
        assert!(reset.contains("reset"), "{reset}");
    }

    #[test]
    fn slow_fields_refresh_every_fifth_sample_or_after_five_seconds() {
        let t0 = Instant::now();
        let mut cadence = SlowCadence::default();
        let second = |s| t0 + Duration::from_secs(s);
        let due: Vec<bool> = (0..11).map(|s| cadence.due(second(s))).collect();
        assert_eq!(
            due,
            [true, false, false, false, false, true, false, false, false, false, true]
        );
        // Samples 10 s apart: every sample refreshes.
        let mut cadence = SlowCadence::default();
        assert!(cadence.due(second(0)));
        assert!(cadence.due(second(10)));
        // Samples 100 ms apart: every 5th.
        let mut cadence = SlowCadence::default();
        let due: Vec<bool> = (0..6)
            .map(|i| cadence.due(t0 + Duration::from_millis(100 * i)))
            .collect();
        assert_eq!(due, [true, false, false, false, false, true]);
    }

    #[test]
    fn field_values_convert_without_wrapping() {
        assert_eq!(sample_u64(&SampleValue::I64(-1)), None);
        assert_eq!(sample_u64(&SampleValue::U32(3)), Some(3));
        assert_eq!(sample_u64(&SampleValue::F64(f64::NAN)), None);
        assert_eq!(saturate_u32(u64::MAX), u32::MAX);
        assert_eq!(milliwatts(350_500), 350.5);
    }
}
