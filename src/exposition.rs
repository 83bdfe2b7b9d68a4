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

#[cfg(test)]
mod tests {
    use super::*;

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
