use std::time::Duration;
pub fn parse_duration(s: &str) -> Result<Duration, String> { humantime::parse_duration(s).map_err(|e| e.to_string()) }
pub fn parse_size(s: &str) -> Result<u64, String> { s.trim_end_matches("GiB").parse::<u64>().map(|g| g << 30).map_err(|e| e.to_string()) }
pub fn format_bytes(n: u64) -> String { format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64) }
pub fn format_duration(d: Duration) -> String { humantime::format_duration(d).to_string() }
