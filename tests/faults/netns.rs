//! A network namespace joined to the root namespace by a veth pair, so an
//! agent and its model servers can be cut off from the coordinator and
//! reconnected. Everything stays on this machine: the pair's /30 is private.
//! Dropping it kills what runs inside, then removes the pair and the namespace,
//! panic or not.

use std::process::Command;

pub struct NetNamespace {
    pub name: String,
    /// The root namespace's end and its address (where the coordinator listens).
    pub root_if: String,
    pub root_ip: String,
    /// The namespace's end; taking it down is the partition.
    pub inner_if: String,
    pub inner_ip: String,
}

/// Runs `ip ARGS`; Err carries what ip said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNamespace {
    /// Creates the namespace and the pair, named after this process so two
    /// runs of the suite never meet. Err says what failed (no CAP_NET_ADMIN,
    /// no netns support): the caller skips loudly.
    pub fn create() -> Result<NetNamespace, String> {
        let id = std::process::id();
        // The third octet varies with the pid so that concurrent suites on one
        // machine pick different subnets.
        let octet = id % 250 + 1;
        let ns = NetNamespace {
            name: format!("gft-{id}"),
            root_if: format!("gfr{id}"),
            root_ip: format!("10.231.{octet}.1"),
            inner_if: format!("gfn{id}"),
            inner_ip: format!("10.231.{octet}.2"),
        };
        // From here on, Drop removes whatever was made, even half of it.
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.root_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ])?;
        ip(&["link", "set", &ns.inner_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.root_ip),
            "dev",
            &ns.root_if,
        ])?;
        ip(&["link", "set", &ns.root_if, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.inner_ip),
            "dev",
            &ns.inner_if,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &ns.inner_if, "up"])?;
        // Model servers listen and are probed on the namespace's own loopback.
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The partition: the namespace's end goes down, so nothing inside can
    /// reach the coordinator and nothing outside can reach in.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "down"]).unwrap();
    }

    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "up"]).unwrap();
    }

    /// Processes running inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        for _ in 0..2 {
            for pid in self.pids() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Deleting one end of a veth pair deletes both; the namespace's end
        // also goes with the namespace. Either may already be gone.
        let _ = ip(&["link", "del", &self.root_if]);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}
