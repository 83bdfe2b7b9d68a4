//! The Prometheus text exposition format, written by hand: one family at a
//! time, label values escaped. Shared by the agent's and the coordinator's
//! `/metrics`.

use std::fmt::Write as _;

/// One series: its label set (without braces) and its value, as text.
pub type Series = (String, String);

/// Writes one family: HELP and TYPE, then one line per series. A family
/// with no series is left out.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, series: Vec<Series>) {
    if series.is_empty() {
        return;
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `k1="v1",k2="v2"` with values escaped as the text format requires.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{key}=\"{escaped}\"");
    }
    out
}

/// A float as the text format spells it.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// A process's resource use as /proc shows it, under the names Prometheus
/// client libraries use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// This process.
    pub fn own() -> ProcessStats {
        ProcessStats::of("/proc/self")
    }

    /// The process whose /proc directory is `dir` (`/proc/1234`); fields it
    /// cannot read are None.
    pub fn of(dir: &str) -> ProcessStats {
        let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
        // SAFETY: sysconf has no preconditions and only reads a constant.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcessStats {
            resident_bytes: parse_status_rss(&status),
            cpu_seconds: parse_stat_cpu_ticks(&stat)
                .filter(|_| ticks_per_s > 0)
                .map(|ticks| ticks as f64 / ticks_per_s as f64),
        }
    }

    pub fn write(&self, out: &mut String) {
        let single = |v: Option<String>| v.map(|v| vec![(String::new(), v)]).unwrap_or_default();
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            single(self.resident_bytes.map(|b| b.to_string())),
        );
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            single(self.cpu_seconds.map(float)),
        );
    }
}

/// `VmRSS:    12345 kB` → bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time in clock ticks (fields 14 and 15 of
/// /proc/PID/stat, counted after the command name, which may hold spaces).
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_parse_from_proc() {
        let stat = "4242 (gpu (fleet) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\tgpufleet\nVmPeak:\t 9000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss(status), Some(12345 * 1024));
        assert_eq!(parse_status_rss(""), None);
        assert!(ProcessStats::own().resident_bytes.is_some_and(|b| b > 0));
        assert_eq!(
            ProcessStats::of("/proc/no-such-pid"),
            ProcessStats::default()
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("a", "x\"y"), ("b", "c:\\d"), ("c", "1\n2")]),
            r#"a="x\"y",b="c:\\d",c="1\n2""#
        );
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(0.5), "0.5");
        assert_eq!(float(3.0), "3");
    }
}
