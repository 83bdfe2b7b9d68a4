//! NVIDIA Xid errors: parsing the driver's kernel log lines and the catalog of
//! Xids that take a GPU out of service.
//!
//! The kernel log is written by the driver, but the agent treats every line as
//! untrusted text: anything it does not recognise is `None`, never a panic.

use std::fmt;

/// A kernel record longer than this is not an NVIDIA driver line (printk caps a
/// record at about 1 KiB); refusing it bounds the work spent on hostile input.
pub const MAX_LINE_BYTES: usize = 4096;

/// Highest Xid number accepted from text. NVIDIA's catalog ends in the 150s
/// today; the margin lets new driver Xids through while rejecting garbage.
pub const MAX_XID: u32 = 999;

/// Xid 79: the GPU has fallen off the bus. Also used for the driver's
/// "GPU has fallen off the bus" line, which carries no Xid number.
pub const XID_FALLEN_OFF_BUS: u32 = 79;

/// Longest detail text kept from a kernel line.
const MAX_DETAIL_CHARS: usize = 200;

/// Xids after which a GPU must not receive new replicas until an operator has
/// looked at it (each needs at least a GPU reset per NVIDIA's Xid catalog).
/// Application-caused Xids (13, 31, 43, 45, 68, 109: faults in the user's
/// program) are counted but do not make a GPU unhealthy.
pub const FATAL_XIDS: &[(u32, &str)] = &[
    (48, "double-bit ECC error"),
    (62, "internal micro-controller halt"),
    (64, "ECC page retirement or row remapper recording failure"),
    (74, "NVLink error"),
    (79, "GPU has fallen off the bus"),
    (92, "high single-bit ECC error rate"),
    (94, "contained ECC error"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
    (140, "unrecovered ECC error"),
];

/// The catalog name of a fatal Xid, `None` for the others.
pub fn fatal_xid_name(xid: u32) -> Option<&'static str> {
    FATAL_XIDS
        .iter()
        .find(|(fatal, _)| *fatal == xid)
        .map(|(_, name)| *name)
}

/// A PCI location as the driver names GPUs: domain, bus and device. The
/// function is left out because a GPU is always function 0 and the kernel's
/// Xid lines omit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddress {
    /// Parses `0000:3b:00`, `0000:3b:00.0` (kernel) and `00000000:3B:00.0`
    /// (NVML's bus id).
    pub fn parse(text: &str) -> Option<PciAddress> {
        let mut parts = text.split(':');
        let domain = parts.next()?;
        let bus = parts.next()?;
        let device_function = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let device = match device_function.split_once('.') {
            Some((device, function)) if !function.is_empty() && function.len() <= 1 => {
                u8::from_str_radix(function, 16).ok()?;
                device
            }
            Some(_) => return None,
            None => device_function,
        };
        if domain.is_empty() || domain.len() > 8 || bus.len() != 2 || device.len() != 2 {
            return None;
        }
        Some(PciAddress {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// One Xid reported by the driver in the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelXid {
    pub pci: PciAddress,
    pub xid: u32,
    /// The driver's description, shortened; for logs and health reasons.
    pub detail: String,
}

/// Parses one kernel log record: a `/dev/kmsg` record (`6,1234,5678901,-;NVRM: ...`),
/// a `dmesg` line (`[ 65.3] NVRM: ...`) or the bare message. Lines that are not
/// an NVIDIA Xid or fallen-off-the-bus report give `None` (logged at debug when
/// they mention NVRM but do not parse).
pub fn parse_kernel_line(line: &str) -> Option<KernelXid> {
    if line.len() > MAX_LINE_BYTES {
        tracing::debug!(
            bytes = line.len(),
            "kernel log line too long to be a driver message; ignored"
        );
        return None;
    }
    let (_, message) = line.split_once("NVRM: ")?;
    let parsed = parse_xid_message(message).or_else(|| parse_fallen_off_bus(message));
    if parsed.is_none() && (message.starts_with("Xid") || message.contains("fallen off the bus")) {
        tracing::debug!(line = %shorten(line, MAX_DETAIL_CHARS), "unrecognised NVIDIA driver Xid line; ignored");
    }
    parsed
}

/// `Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.`
fn parse_xid_message(message: &str) -> Option<KernelXid> {
    let rest = message.strip_prefix("Xid (PCI:")?;
    let (pci, rest) = rest.split_once("): ")?;
    let pci = PciAddress::parse(pci)?;
    let (number, rest) = match rest.split_once(',') {
        Some((number, rest)) => (number, rest),
        None => (rest, ""),
    };
    let xid = parse_xid_number(number)?;
    Some(KernelXid {
        pci,
        xid,
        detail: xid_detail(rest),
    })
}

/// `GPU at PCI:0000:3b:00: GPU has fallen off the bus.` (older drivers) and
/// `GPU 0000:91:00.0: GPU has fallen off the bus.` (newer ones).
fn parse_fallen_off_bus(message: &str) -> Option<KernelXid> {
    let rest = message.strip_prefix("GPU ")?;
    let rest = rest.strip_prefix("at PCI:").unwrap_or(rest);
    let (pci, text) = rest.split_once(": ")?;
    if !text.trim_end().starts_with("GPU has fallen off the bus") {
        return None;
    }
    Some(KernelXid {
        pci: PciAddress::parse(pci)?,
        xid: XID_FALLEN_OFF_BUS,
        detail: shorten(text.trim().trim_end_matches('.'), MAX_DETAIL_CHARS),
    })
}

fn parse_xid_number(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let xid: u32 = text.parse().ok()?;
    (1..=MAX_XID).contains(&xid).then_some(xid)
}

/// Drops the `pid=...` and `name=...` fields the driver puts before the
/// description; they name the process that saw the error, not the error.
fn xid_detail(rest: &str) -> String {
    let mut fields = rest.split(", ").map(str::trim).peekable();
    while let Some(field) = fields.peek() {
        if field.starts_with("pid=") || field.starts_with("name=") {
            fields.next();
        } else {
            break;
        }
    }
    let detail = fields.collect::<Vec<_>>().join(", ");
    shorten(detail.trim().trim_end_matches('.'), MAX_DETAIL_CHARS)
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pci(bus: u8) -> PciAddress {
        PciAddress {
            domain: 0,
            bus,
            device: 0,
        }
    }

    #[test]
    fn kmsg_record_with_fallen_off_bus_xid() {
        let x = parse_kernel_line(
            "6,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!(x.pci, pci(0x3b));
        assert_eq!(x.xid, 79);
        assert_eq!(x.detail, "GPU has fallen off the bus");
    }

    #[test]
    fn double_bit_error_with_unknown_process() {
        let x = parse_kernel_line(
            "3,2201,91823311,-;NVRM: Xid (PCI:0000:3b:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
        )
        .unwrap();
        assert_eq!(x.xid, 48);
        assert_eq!(
            x.detail,
            "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0"
        );
    }

    #[test]
    fn dmesg_lines_as_operators_paste_them() {
        let x = parse_kernel_line(
            "[   65.315783] NVRM: Xid (PCI:0000:01:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!((x.pci, x.xid), (pci(0x01), 79));

        let x = parse_kernel_line(
            "[Fri Aug 30 11:43:09 2024] NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on (GPC 7, TPC 0, SM 1): Out Of Range Address",
        )
        .unwrap();
        assert_eq!((x.pci, x.xid), (pci(0xcb), 13));
        assert!(x.detail.starts_with("Graphics SM Warp Exception"));
    }

    #[test]
    fn fallen_off_bus_lines_without_an_xid_number() {
        let old = parse_kernel_line(
            "6,1234,5678901,-;NVRM: GPU at PCI:0000:3b:00: GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!((old.pci, old.xid), (pci(0x3b), 79));

        let new = parse_kernel_line(
            "[6781741.548783] NVRM: GPU 0000:91:00.0: GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!((new.pci, new.xid), (pci(0x91), 79));
    }

    #[test]
    fn driver_lines_that_are_not_errors_are_ignored() {
        for line in [
            "6,1,2,-;NVRM: GPU at PCI:0000:91:00: GPU-b6c3b2be-c55b-d076-fa0e-d464e4c7e08b",
            "6,1,2,-;NVRM: GPU Board Serial Number: 1653723052734",
            "6,1,2,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
            "6,1,2,-;nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 20034, Fatal, Link 41 LTSSM Fault Up",
            " SUBSYSTEM=pci",
            "",
        ] {
            assert_eq!(parse_kernel_line(line), None, "{line}");
        }
    }

    #[test]
    fn malformed_and_hostile_lines_are_none() {
        for line in [
            "NVRM: Xid (PCI:0000:3b:00): abc, pid=1, junk",
            "NVRM: Xid (PCI:0000:3b:00): 0, pid=1, zero is not an Xid",
            "NVRM: Xid (PCI:0000:3b:00): 4294967296, pid=1, overflow",
            "NVRM: Xid (PCI:0000:3b:00): 1000, pid=1, beyond the catalog",
            "NVRM: Xid (PCI:): 79, pid=1, no PCI id",
            "NVRM: Xid 79, pid=1, no PCI id",
            "NVRM: Xid (PCI:zz:3b:00): 79, bad domain",
            "NVRM: Xid (PCI:0000:3b:00:11:22): 79, too many parts",
            "NVRM: Xid (PCI:0000:3b:00",
            "NVRM: GPU at PCI:0000:3b:00: GPU is fine",
        ] {
            assert_eq!(parse_kernel_line(line), None, "{line}");
        }
        let huge = format!(
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, {}",
            "A".repeat(1 << 20)
        );
        assert_eq!(parse_kernel_line(&huge), None);
    }

    #[test]
    fn long_details_are_shortened() {
        let line = format!("NVRM: Xid (PCI:0000:3b:00): 31, pid=9, {}", "é".repeat(900));
        let x = parse_kernel_line(&line).unwrap();
        assert_eq!(x.detail.chars().count(), MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn pci_addresses_from_kernel_and_nvml_agree() {
        let kernel = PciAddress::parse("0000:3b:00").unwrap();
        let nvml = PciAddress::parse("00000000:3B:00.0").unwrap();
        assert_eq!(kernel, nvml);
        assert_eq!(kernel.to_string(), "0000:3b:00");
        assert_eq!(PciAddress::parse("0000:3b:00.x"), None);
    }

    #[test]
    fn fatal_catalog_includes_the_reset_required_xids() {
        for xid in [48, 62, 64, 74, 79, 92, 94, 95, 119, 120] {
            assert!(fatal_xid_name(xid).is_some(), "Xid {xid}");
        }
        for app_xid in [13, 31, 43, 45, 68, 109] {
            assert!(fatal_xid_name(app_xid).is_none(), "Xid {app_xid}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,300}") {
            let _ = parse_kernel_line(&line);
        }

        #[test]
        fn arbitrary_text_after_the_driver_prefix_never_panics(rest in ".{0,300}") {
            let _ = parse_kernel_line(&format!("6,1,2,-;NVRM: Xid (PCI:{rest}"));
            let _ = parse_kernel_line(&format!("NVRM: GPU {rest}"));
        }

        #[test]
        fn well_formed_xids_round_trip(domain in 0u32..0xffff, bus: u8, device in 0u8..32, xid in 1u32..=MAX_XID) {
            let line = format!("6,9,9,-;NVRM: Xid (PCI:{domain:04x}:{bus:02x}:{device:02x}): {xid}, pid=1, text.");
            let parsed = parse_kernel_line(&line).unwrap();
            prop_assert_eq!(parsed.pci, PciAddress { domain, bus, device });
            prop_assert_eq!(parsed.xid, xid);
        }
    }
}
