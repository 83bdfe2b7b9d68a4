//! CPU replicas (`gpus = 0`): placed by the CPUs and RAM they ask of a host,
//! against what the host has left once the replicas planned there took
//! their share.

use crate::config::units::format_bytes;
use crate::domain::{HostInfo, HostSample};

use super::fleet::Fleet;
use super::nodes::Node;

/// What a host has left for replicas that ask for CPUs and RAM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostRoom {
    pub cpus: f64,
    pub memory_bytes: u64,
}

impl HostRoom {
    /// The host's CPUs less those asked by `asked` (cpu, memory) requests;
    /// its RAM likewise, and never more than the sample says is available
    /// (other processes use RAM too). A host that has not sent a sample yet
    /// counts its total RAM.
    pub fn of(host: &HostInfo, sample: &HostSample, asked: &[(f64, u64)]) -> HostRoom {
        let cpus_asked: f64 = asked.iter().map(|(c, _)| c).sum();
        let memory_asked: u64 = asked.iter().map(|(_, m)| m).sum();
        let mut memory = host.memory_total_bytes.saturating_sub(memory_asked);
        if sample.memory_available_bytes > 0 {
            memory = memory.min(sample.memory_available_bytes);
        }
        HostRoom {
            cpus: (f64::from(host.cpus) - cpus_asked).max(0.0),
            memory_bytes: memory,
        }
    }

    /// Why a replica asking for `cpus` and `memory_bytes` does not fit here;
    /// `None` when it does.
    pub fn shortfall(&self, cpus: f64, memory_bytes: u64) -> Option<String> {
        // A hair of slack: 0.1 + 0.2 CPUs asked must still fit in 0.3.
        let fits = self.cpus + 1e-9 >= cpus && self.memory_bytes >= memory_bytes;
        (!fits).then(|| {
            format!(
                "has {} CPUs and {} RAM free, needs {} and {}",
                trim(self.cpus),
                format_bytes(self.memory_bytes),
                trim(cpus),
                format_bytes(memory_bytes)
            )
        })
    }
}

fn trim(cpus: f64) -> String {
    let rounded = (cpus * 100.0).round() / 100.0;
    format!("{rounded}")
}

impl Fleet {
    /// Why node `n` cannot take a replica of `model`, when the model asks
    /// for host CPUs or RAM and the node lacks them.
    /// `asked`: what the plan's replicas on the node ask of the host.
    pub(super) fn host_shortfall(
        &self,
        n: &Node,
        model: &str,
        asked: &[(f64, u64)],
    ) -> Option<String> {
        let server = &self.models.get(model)?.spec.server;
        if server.cpu <= 0.0 && server.memory_bytes == 0 {
            return None;
        }
        HostRoom::of(&n.host, &n.host_sample, asked).shortfall(server.cpu, server.memory_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(cpus: u32, gib: u64) -> HostInfo {
        HostInfo {
            cpus,
            memory_total_bytes: gib * GIB,
            ..HostInfo::default()
        }
    }

    #[test]
    fn room_is_what_the_planned_replicas_left() {
        let room = HostRoom::of(
            &host(8, 64),
            &HostSample::default(),
            &[(2.0, 8 * GIB), (1.5, 4 * GIB)],
        );
        assert_eq!(room.cpus, 4.5);
        assert_eq!(room.memory_bytes, 52 * GIB);
        assert_eq!(room.shortfall(4.5, 52 * GIB), None);
        let why = room.shortfall(6.0, GIB).unwrap();
        assert_eq!(
            why,
            "has 4.5 CPUs and 52.0 GiB RAM free, needs 6 and 1.0 GiB"
        );
    }

    #[test]
    fn ram_others_use_counts_too() {
        let busy = HostSample {
            memory_available_bytes: 3 * GIB,
            ..HostSample::default()
        };
        let room = HostRoom::of(&host(8, 64), &busy, &[]);
        assert_eq!(room.memory_bytes, 3 * GIB);
        assert!(room.shortfall(1.0, 4 * GIB).is_some());
    }

    #[test]
    fn fractions_of_cpus_add_up_exactly_enough() {
        let room = HostRoom::of(&host(1, 8), &HostSample::default(), &[(0.1, 0), (0.2, 0)]);
        assert_eq!(room.shortfall(0.7, 0), None);
    }
}
