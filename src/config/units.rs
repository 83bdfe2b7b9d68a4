//! Durations and sizes as operators write them in config files and flags
//! ("30s", "5m", "20GiB", "80GB"), and back again for display.

use std::time::Duration;

/// Parses a humantime duration: "30s", "5m", "1h 30m", "20ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(
            "an empty string is not a duration; use e.g. \"30s\", \"5m\" or \"20ms\"".into(),
        );
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("`{s}` is not a duration; use e.g. \"30s\", \"5m\" or \"20ms\""))
}

/// Units a size may carry: decimal ones are 1000-based, binary ones (`iB`)
/// 1024-based, as on disk labels and in `free -h` respectively.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("pb", 1000 * 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
];

/// Parses a size in bytes: "20GiB", "512MiB", "80GB", "1.5GiB", "1024".
/// A bare number is bytes and must be whole.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let not_a_size = || format!("`{s}` is not a size; use e.g. \"20GiB\", \"512MiB\" or \"80GB\"");
    let trimmed = s.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(not_a_size)?
    };

    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
        return Err(not_a_size());
    }
    if !fraction.is_empty() && multiplier == 1 {
        return Err(format!("`{s}` is not a whole number of bytes"));
    }
    // Digits only from here on (split on the first '.', a second one fails).
    let whole: u128 = whole.parse().map_err(|_| not_a_size())?;
    let mut bytes = whole.checked_mul(u128::from(multiplier));
    if !fraction.is_empty() {
        // Integer arithmetic keeps "1.1GB" exact; extra digits past 18 add nothing.
        let digits = &fraction[..fraction.len().min(18)];
        let numerator: u128 = digits.parse().map_err(|_| not_a_size())?;
        let denominator = 10u128.pow(digits.len() as u32);
        let part = numerator * u128::from(multiplier) / denominator;
        bytes = bytes.and_then(|b| b.checked_add(part));
    }
    bytes
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large; sizes go up to 16 EiB"))
}

/// Formats a byte count for people: "0 B", "512 B", "20.0 GiB".
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a duration in humantime style ("1m 30s", "250ms"), dropping
/// sub-millisecond noise that nobody reading a status line cares about.
pub fn format_duration(d: Duration) -> String {
    let millis = Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64);
    if millis.is_zero() {
        return "0s".to_string();
    }
    humantime::format_duration(millis).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn durations_in_humantime_form() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for bad in ["", "30", "5 parsecs", "-5s", "s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad:?}: {err}");
            assert!(err.contains("\"30s\""), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("20GiB"), Ok(20 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("80GB"), Ok(80_000_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1kib"), Ok(1024));
        assert_eq!(parse_size("20 GiB"), Ok(20 * GIB));
        assert_eq!(parse_size("1.5GiB"), Ok(GIB + GIB / 2));
        assert_eq!(parse_size("1.1GB"), Ok(1_100_000_000));
        assert_eq!(parse_size("3B"), Ok(3));
    }

    #[test]
    fn bad_sizes_are_rejected_with_an_example() {
        for bad in [
            "", "20 GB?", "GiB", "20G", "1.2.3GiB", "-1GiB", ".5GiB", "5.GiB", "20 gigs",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("is not a size"), "{bad:?}: {err}");
            assert!(err.contains("\"20GiB\""), "{bad:?}: {err}");
        }
        assert!(parse_size("1.5")
            .unwrap_err()
            .contains("whole number of bytes"));
    }

    #[test]
    fn sizes_past_u64_are_too_large_not_wrapped() {
        assert_eq!(parse_size("16EiB").ok(), None);
        assert!(parse_size("20000000PiB").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bytes_format_for_people() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(20 * GIB), "20.0 GiB");
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
        assert_eq!(format_bytes(GIB + GIB / 2), "1.5 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_format_like_they_parse() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(
            format_duration(Duration::from_nanos(1_500_000_123)),
            "1s 500ms"
        );
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_nanos(10)), "0s");
        let d = Duration::from_secs(3 * 3600 + 7);
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}
