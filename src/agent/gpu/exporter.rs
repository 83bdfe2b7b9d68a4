//! GPU samples in the Prometheus text format, two ways: exactly as
//! dcgm-exporter writes them (names, help texts, units and its camelCase
//! labels, so Grafana dashboards built for it work unchanged; served on
//! `/metrics/dcgm`), and as gpufleet's own families with snake_case labels
//! and info series that join a GPU to the replica and model on it (on
//! `/metrics`). Also the small text-format writer the agent's other metrics
//! use.

use crate::domain::{GpuInfo, GpuSample, ReplicaStatus};

use super::sampler::GpuSnapshot;

const MIB: u64 = 1024 * 1024;

pub use crate::exposition::{family, float, labels, Series};

type Field = fn(&GpuSample) -> Option<String>;

/// dcgm-exporter's default counters (its etc/default-counters.csv) that
/// NVML can provide, in that file's order, with its kinds and help texts.
/// Units follow it: whole percent and degrees, watts with six decimals,
/// memory in MiB (free = total − used), energy in mJ. Left out, because NVML
/// cannot give them as DCGM defines them: DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL
/// (DCGM's own per-link accounting), DCGM_FI_DEV_VGPU_LICENSE_STATUS (vGPU
/// hosts only) and the DCGM_FI_PROF_* families (DCGM's profiling module).
const DCGM_FIELDS: &[(&str, &str, &str, Field)] = &[
    (
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
        |s| s.sm_clock_mhz.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        |s| s.detail.mem_clock_mhz.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_MEMORY_TEMP",
        "gauge",
        "Memory temperature (in C).",
        |s| {
            s.detail
                .memory_temperature_c
                .map(|t| (t.round() as i64).to_string())
        },
    ),
    (
        "DCGM_FI_DEV_GPU_TEMP",
        "gauge",
        "GPU temperature (in C).",
        |s| s.temperature_c.map(|t| (t.round() as i64).to_string()),
    ),
    (
        "DCGM_FI_DEV_POWER_USAGE",
        "gauge",
        "Power draw (in W).",
        |s| s.power_w.map(|w| format!("{w:.6}")),
    ),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        |s| s.detail.energy_mj.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "counter",
        "Total number of PCIe retries.",
        |s| s.detail.pcie_replays.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "GPU utilization (in %).",
        |s| Some((s.utilization_pct.round() as i64).to_string()),
    ),
    (
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "Memory utilization (in %).",
        |s| Some((s.memory_utilization_pct.round() as i64).to_string()),
    ),
    (
        "DCGM_FI_DEV_ENC_UTIL",
        "gauge",
        "Encoder utilization (in %).",
        |s| s.detail.encoder_pct.map(|v| (v.round() as i64).to_string()),
    ),
    (
        "DCGM_FI_DEV_DEC_UTIL",
        "gauge",
        "Decoder utilization (in %).",
        |s| s.detail.decoder_pct.map(|v| (v.round() as i64).to_string()),
    ),
    (
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "Value of the last XID error encountered.",
        |s| Some(s.last_xid.to_string()),
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
        |s| Some((s.memory_total_bytes.saturating_sub(s.memory_used_bytes) / MIB).to_string()),
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Framebuffer memory used (in MiB).",
        |s| Some((s.memory_used_bytes / MIB).to_string()),
    ),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
        |s| s.detail.remapped_rows_uncorrectable.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
        |s| s.detail.remapped_rows_correctable.map(|v| v.to_string()),
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "Whether remapping of rows has failed",
        |s| s.remapped_rows_failed.map(|v| u8::from(v > 0).to_string()),
    ),
];

/// gpufleet's own per-GPU gauges (name, help); the counter of Xid errors is
/// written separately.
const GPUFLEET_GAUGES: &[(&str, &str, Field)] = &[
    (
        "gpufleet_gpu_healthy",
        "1 when the GPU passes the agent's health rules, else 0.",
        |s| Some(u8::from(s.healthy).to_string()),
    ),
    (
        "gpufleet_gpu_memory_total_bytes",
        "GPU memory installed.",
        |s| Some(s.memory_total_bytes.to_string()),
    ),
    (
        "gpufleet_gpu_memory_used_bytes",
        "GPU memory in use.",
        |s| Some(s.memory_used_bytes.to_string()),
    ),
    (
        "gpufleet_gpu_power_limit_watts",
        "Enforced power limit.",
        |s| s.power_limit_w.map(float),
    ),
    (
        "gpufleet_gpu_throttle_reasons",
        "NVML clock throttle reasons bitmask.",
        |s| Some(s.throttle_reasons.to_string()),
    ),
    (
        "gpufleet_gpu_ecc_volatile_single_bit_errors",
        "Single-bit ECC errors since the last driver load or GPU reset.",
        |s| s.ecc_volatile_single_bit.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_ecc_volatile_double_bit_errors",
        "Double-bit ECC errors since the last driver load or GPU reset.",
        |s| s.ecc_volatile_double_bit.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_remapped_rows_pending",
        "Memory row remapping waiting for a GPU reset (NVML remapped rows pending).",
        |s| s.remapped_rows_pending.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_remapped_rows_failed",
        "Memory row remapping failed (NVML remapped rows failure).",
        |s| s.remapped_rows_failed.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_pcie_rx_bytes_per_second",
        "PCIe receive throughput.",
        |s| s.pcie_rx_bytes_per_s.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_pcie_tx_bytes_per_second",
        "PCIe transmit throughput.",
        |s| s.pcie_tx_bytes_per_s.map(|v| v.to_string()),
    ),
    (
        "gpufleet_gpu_processes",
        "Compute processes on the GPU.",
        |s| Some(s.processes.len().to_string()),
    ),
];

/// The inventory entry of a sample's GPU (an empty one if the inventory
/// lacks it).
fn info_of<'a>(gpus: &'a GpuSnapshot, sample: &GpuSample) -> &'a GpuInfo {
    static MISSING: std::sync::OnceLock<GpuInfo> = std::sync::OnceLock::new();
    gpus.inventory
        .iter()
        .find(|g| g.index == sample.index)
        .unwrap_or_else(|| MISSING.get_or_init(GpuInfo::default))
}

/// Each sample with its GPU's dcgm-exporter labels: `gpu`, `UUID`,
/// `pci_bus_id`, `device` (`nvidia<index>`), `modelName`, `Hostname`, and
/// `DCGM_FI_DRIVER_VERSION` when the driver is known.
fn dcgm_rows<'a>(gpus: &'a GpuSnapshot, node: &str) -> Vec<(String, &'a GpuSample)> {
    gpus.samples
        .iter()
        .map(|sample| {
            let info = info_of(gpus, sample);
            // A MIG instance is labelled as dcgm-exporter does: the physical
            // GPU's `gpu` and `device`, plus the instance in GPU_I_ID and its
            // profile ("1g.18gb") in GPU_I_PROFILE.
            let physical = info.mig_parent.unwrap_or(sample.index);
            let index = physical.to_string();
            let device = format!("nvidia{physical}");
            let instance = sample.index.to_string();
            let profile = info
                .name
                .rsplit(" MIG ")
                .next()
                .unwrap_or_default()
                .to_string();
            let mut pairs = vec![
                ("gpu", index.as_str()),
                ("UUID", info.uuid.as_str()),
                ("pci_bus_id", info.pci_bus_id.as_str()),
                ("device", device.as_str()),
                ("modelName", info.name.as_str()),
                ("Hostname", node),
            ];
            if info.mig_parent.is_some() {
                pairs.push(("GPU_I_ID", instance.as_str()));
                pairs.push(("GPU_I_PROFILE", profile.as_str()));
            }
            if !gpus.driver_version.is_empty() {
                pairs.push(("DCGM_FI_DRIVER_VERSION", gpus.driver_version.as_str()));
            }
            (labels(&pairs), sample)
        })
        .collect()
}

/// Each sample with gpufleet's own GPU labels: `node`, `gpu` (the index
/// gpufleet places by: a MIG instance's own) and `uuid`. The rest of what
/// identifies a GPU is in `gpufleet_gpu_info`.
fn gpufleet_rows<'a>(gpus: &'a GpuSnapshot, node: &str) -> Vec<(String, &'a GpuSample)> {
    gpus.samples
        .iter()
        .map(|sample| {
            let info = info_of(gpus, sample);
            let index = sample.index.to_string();
            let pairs = [
                ("node", node),
                ("gpu", index.as_str()),
                ("uuid", info.uuid.as_str()),
            ];
            (labels(&pairs), sample)
        })
        .collect()
}

fn per_gpu(rows: &[(String, &GpuSample)], field: Field) -> Vec<Series> {
    rows.iter()
        .filter_map(|(labels, sample)| Some((labels.clone(), field(sample)?)))
        .collect()
}

/// dcgm-exporter's families for one snapshot, as it writes them.
pub fn render_dcgm_metrics(out: &mut String, gpus: &GpuSnapshot, node: &str) {
    let rows = dcgm_rows(gpus, node);
    for (name, kind, help, field) in DCGM_FIELDS {
        family(out, name, kind, help, per_gpu(&rows, *field));
    }
}

/// gpufleet's own GPU families for one snapshot, with the info series that
/// join each GPU to its model name and driver, and to the replicas on it.
pub fn render_gpu_metrics(
    out: &mut String,
    gpus: &GpuSnapshot,
    node: &str,
    replicas: &[ReplicaStatus],
) {
    let rows = gpufleet_rows(gpus, node);
    let mut info = Vec::new();
    let mut on_gpu = Vec::new();
    for sample in &gpus.samples {
        let gpu = info_of(gpus, sample);
        let index = sample.index.to_string();
        let parent = gpu.mig_parent.map(|p| p.to_string()).unwrap_or_default();
        info.push((
            labels(&[
                ("node", node),
                ("gpu", &index),
                ("uuid", &gpu.uuid),
                ("model_name", &gpu.name),
                ("pci_bus_id", &gpu.pci_bus_id),
                ("mig_parent_gpu", &parent),
                ("driver_version", &gpus.driver_version),
            ]),
            "1".to_string(),
        ));
        for r in replicas.iter().filter(|r| r.gpus.contains(&sample.index)) {
            on_gpu.push((
                labels(&[
                    ("node", node),
                    ("gpu", &index),
                    ("uuid", &gpu.uuid),
                    ("replica", &r.id),
                    ("model", &r.model),
                ]),
                "1".to_string(),
            ));
        }
    }
    family(
        out,
        "gpufleet_gpu_info",
        "gauge",
        "Always 1: what the GPU is (model name, PCI bus, MIG parent, driver).",
        info,
    );
    family(
        out,
        "gpufleet_gpu_replica_info",
        "gauge",
        "Always 1 for each replica placed on the GPU: join GPU series to models on(node, gpu).",
        on_gpu,
    );
    for (name, help, field) in GPUFLEET_GAUGES {
        family(out, name, "gauge", help, per_gpu(&rows, *field));
    }
    family(
        out,
        "gpufleet_gpu_xid_errors_total",
        "counter",
        "Xid errors seen since the agent started.",
        per_gpu(&rows, |s| Some(s.xid_errors.to_string())),
    );
    let mut windows = Vec::new();
    for (gpu_labels, s) in &rows {
        for (window, stats) in [("10s", &s.utilization_10s), ("60s", &s.utilization_60s)] {
            for (stat, value) in [("mean", stats.mean), ("max", stats.max), ("p95", stats.p95)] {
                let extra = labels(&[("window", window), ("stat", stat)]);
                windows.push((format!("{gpu_labels},{extra}"), float(value)));
            }
        }
    }
    family(
        out,
        "gpufleet_gpu_utilization_window_percent",
        "gauge",
        "GPU utilization over a rolling window (mean, max, p95).",
        windows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WindowStats;

    fn snapshot() -> GpuSnapshot {
        GpuSnapshot {
            backend: "nvml",
            driver_version: "550.54.15".into(),
            cuda_version: "12.4".into(),
            inventory: vec![GpuInfo {
                index: 0,
                uuid: "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_total_bytes: 80 << 30,
                pci_bus_id: "00000000:18:00.0".into(),
                healthy: true,
                health_reason: String::new(),
                mig_parent: None,
            }],
            samples: vec![GpuSample {
                index: 0,
                memory_used_bytes: (20 << 30) + 12345,
                memory_total_bytes: 80 << 30,
                utilization_pct: 87.4,
                memory_utilization_pct: 41.6,
                temperature_c: Some(61.0),
                power_w: Some(512.25),
                power_limit_w: Some(700.0),
                sm_clock_mhz: Some(1980),
                throttle_reasons: 0x4,
                ecc_volatile_single_bit: Some(3),
                ecc_volatile_double_bit: None,
                remapped_rows_pending: Some(0),
                remapped_rows_failed: Some(0),
                pcie_rx_bytes_per_s: Some(1024),
                pcie_tx_bytes_per_s: None,
                healthy: true,
                last_xid: 13,
                xid_errors: 2,
                detail: crate::domain::GpuDetail {
                    mem_clock_mhz: Some(2619),
                    memory_temperature_c: Some(55.4),
                    energy_mj: Some(123_456_789),
                    pcie_replays: Some(2),
                    encoder_pct: Some(0.0),
                    decoder_pct: Some(3.0),
                    remapped_rows_correctable: Some(1),
                    remapped_rows_uncorrectable: Some(0),
                },
                utilization_10s: WindowStats {
                    last: 87.4,
                    mean: 80.0,
                    max: 90.5,
                    p95: 90.0,
                },
                ..GpuSample::default()
            }],
            sample_cost: Default::default(),
        }
    }

    #[test]
    fn dcgm_families_match_dcgm_exporter_output() {
        let mut out = String::new();
        render_dcgm_metrics(&mut out, &snapshot(), "gpu-host-17");
        let labels = r#"gpu="0",UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",pci_bus_id="00000000:18:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-host-17",DCGM_FI_DRIVER_VERSION="550.54.15""#;
        let expected = format!(
            "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{{{labels}}} 1980
# HELP DCGM_FI_DEV_MEM_CLOCK Memory clock frequency (in MHz).
# TYPE DCGM_FI_DEV_MEM_CLOCK gauge
DCGM_FI_DEV_MEM_CLOCK{{{labels}}} 2619
# HELP DCGM_FI_DEV_MEMORY_TEMP Memory temperature (in C).
# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge
DCGM_FI_DEV_MEMORY_TEMP{{{labels}}} 55
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{{{labels}}} 61
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{{{labels}}} 512.250000
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} 123456789
# HELP DCGM_FI_DEV_PCIE_REPLAY_COUNTER Total number of PCIe retries.
# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER counter
DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{labels}}} 2
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{{labels}}} 87
# HELP DCGM_FI_DEV_MEM_COPY_UTIL Memory utilization (in %).
# TYPE DCGM_FI_DEV_MEM_COPY_UTIL gauge
DCGM_FI_DEV_MEM_COPY_UTIL{{{labels}}} 42
# HELP DCGM_FI_DEV_ENC_UTIL Encoder utilization (in %).
# TYPE DCGM_FI_DEV_ENC_UTIL gauge
DCGM_FI_DEV_ENC_UTIL{{{labels}}} 0
# HELP DCGM_FI_DEV_DEC_UTIL Decoder utilization (in %).
# TYPE DCGM_FI_DEV_DEC_UTIL gauge
DCGM_FI_DEV_DEC_UTIL{{{labels}}} 3
# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.
# TYPE DCGM_FI_DEV_XID_ERRORS gauge
DCGM_FI_DEV_XID_ERRORS{{{labels}}} 13
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{{{labels}}} 61439
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{{labels}}} 20480
# HELP DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS Number of remapped rows for uncorrectable errors
# TYPE DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS counter
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{labels}}} 0
# HELP DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS Number of remapped rows for correctable errors
# TYPE DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS counter
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{{{labels}}} 1
# HELP DCGM_FI_DEV_ROW_REMAP_FAILURE Whether remapping of rows has failed
# TYPE DCGM_FI_DEV_ROW_REMAP_FAILURE gauge
DCGM_FI_DEV_ROW_REMAP_FAILURE{{{labels}}} 0
"
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn gpufleet_gpu_families_skip_unsupported_fields() {
        let mut out = String::new();
        render_gpu_metrics(&mut out, &snapshot(), "n", &[]);
        let line = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .and_then(|l| l.rsplit_once(' ').map(|(_, v)| v.to_string()))
        };
        assert_eq!(line("gpufleet_gpu_healthy").as_deref(), Some("1"));
        assert_eq!(line("gpufleet_gpu_xid_errors_total").as_deref(), Some("2"));
        assert_eq!(line("gpufleet_gpu_throttle_reasons").as_deref(), Some("4"));
        assert_eq!(
            line("gpufleet_gpu_ecc_volatile_single_bit_errors").as_deref(),
            Some("3")
        );
        assert_eq!(line("gpufleet_gpu_ecc_volatile_double_bit_errors"), None);
        assert!(!out.contains("gpufleet_gpu_pcie_tx_bytes_per_second"));
        assert!(out.contains("# TYPE gpufleet_gpu_xid_errors_total counter\n"));
        assert!(out.contains(
            r#"{node="n",gpu="0",uuid="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",window="10s",stat="p95"} 90"#
        ));
        assert!(
            !out.contains("DCGM_"),
            "dcgm-exporter's families are served apart"
        );
    }

    #[test]
    fn a_mig_instance_carries_its_gpus_device_and_its_own_instance_labels() {
        let mut s = snapshot();
        s.driver_version.clear();
        s.inventory[0].index = 4;
        s.inventory[0].mig_parent = Some(0);
        s.inventory[0].uuid = "MIG-1".into();
        s.inventory[0].name = "NVIDIA H200 MIG 1g.18gb".into();
        s.samples[0].index = 4;
        let mut out = String::new();
        render_dcgm_metrics(&mut out, &s, "n");
        assert!(
            out.contains(r#"{gpu="0",UUID="MIG-1",pci_bus_id="00000000:18:00.0",device="nvidia0",modelName="NVIDIA H200 MIG 1g.18gb",Hostname="n",GPU_I_ID="4",GPU_I_PROFILE="1g.18gb"}"#),
            "{out}"
        );
    }

    #[test]
    fn no_gpus_no_gpu_families() {
        let mut out = String::new();
        render_gpu_metrics(&mut out, &GpuSnapshot::default(), "n", &[]);
        render_dcgm_metrics(&mut out, &GpuSnapshot::default(), "n");
        assert_eq!(out, "");
    }

    #[test]
    fn a_gpu_without_inventory_or_driver_still_has_the_label_set() {
        let mut s = snapshot();
        s.inventory.clear();
        s.driver_version.clear();
        let mut out = String::new();
        render_dcgm_metrics(&mut out, &s, "n");
        assert!(out.contains(
            r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="",pci_bus_id="",device="nvidia0",modelName="",Hostname="n"} 87"#
        ));
    }

    #[test]
    fn info_series_join_each_gpu_to_its_replica_and_model() {
        let mut s = snapshot();
        let mut second = s.samples[0].clone();
        second.index = 1;
        s.samples.push(second);
        let replica = ReplicaStatus {
            id: "llama-0".into(),
            model: "llama".into(),
            gpus: vec![1],
            ..ReplicaStatus::default()
        };
        let mut out = String::new();
        render_gpu_metrics(&mut out, &s, "n", &[replica]);
        assert!(out.contains(
            r#"gpufleet_gpu_info{node="n",gpu="0",uuid="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",model_name="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:18:00.0",mig_parent_gpu="",driver_version="550.54.15"} 1"#
        ), "{out}");
        let joined: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("gpufleet_gpu_replica_info{"))
            .collect();
        assert_eq!(
            joined,
            [
                r#"gpufleet_gpu_replica_info{node="n",gpu="1",uuid="",replica="llama-0",model="llama"} 1"#
            ]
        );
    }
}
