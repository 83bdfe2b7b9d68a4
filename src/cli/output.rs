//! How operator commands print: aligned tables for people, JSON or YAML for
//! scripts.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// Aligned columns, with more of them.
    Wide,
    /// A JSON document (the fields are a contract: docs/cli.md).
    Json,
    /// The same document as YAML.
    Yaml,
}

impl Output {
    /// Whether this prints the data itself rather than a table.
    pub fn is_data(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }

    /// `value` as this format's document, ending in a newline; `None` for the
    /// table formats, which each command renders itself.
    pub fn document<T: Serialize + ?Sized>(self, value: &T) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Output::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
            Output::Yaml => Some(to_yaml(&serde_json::to_value(value)?)),
            Output::Table | Output::Wide => None,
        })
    }
}

/// A plain aligned table: header row, then rows, columns separated by two
/// spaces (like kubectl and nomad).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Prints `value` as JSON, or as YAML when that is what was asked for.
pub fn print_data<T: Serialize + ?Sized>(value: &T, output: Output) -> anyhow::Result<()> {
    let doc = match output.document(value)? {
        Some(doc) => doc,
        None => serde_json::to_string_pretty(value)? + "\n",
    };
    print!("{doc}");
    Ok(())
}

/// A JSON value as a YAML 1.2 block document. Strings are written in JSON's
/// double-quoted form, which YAML reads the same, so no value can turn into
/// a number, a boolean or null on the way (`"no"`, `"1e3"`, `"~"`).
pub fn to_yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    match value {
        serde_json::Value::Array(a) if !a.is_empty() => yaml_seq(&mut out, a, 0),
        serde_json::Value::Object(o) if !o.is_empty() => yaml_map(&mut out, o, 0, false),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(_) => "[]".into(),
        serde_json::Value::Object(_) => "{}".into(),
        other => other.to_string(),
    }
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    if plain {
        k.to_string()
    } else {
        serde_json::Value::String(k.to_string()).to_string()
    }
}

/// A mapping at `indent`; with `inline_first` its first key goes on the line
/// already begun by a sequence's `- `.
fn yaml_map(
    out: &mut String,
    map: &serde_json::Map<String, serde_json::Value>,
    indent: usize,
    inline_first: bool,
) {
    for (i, (k, v)) in map.iter().enumerate() {
        let pad = if i == 0 && inline_first { 0 } else { indent };
        let _ = write!(out, "{:pad$}{}:", "", yaml_key(k));
        match v {
            // A sequence under a key sits at the key's own indentation, as
            // kubectl writes it.
            serde_json::Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                yaml_seq(out, a, indent);
            }
            serde_json::Value::Object(o) if !o.is_empty() => {
                out.push('\n');
                yaml_map(out, o, indent + 2, false);
            }
            scalar => {
                let _ = writeln!(out, " {}", yaml_scalar(scalar));
            }
        }
    }
}

fn yaml_seq(out: &mut String, items: &[serde_json::Value], indent: usize) {
    for v in items {
        let _ = write!(out, "{:indent$}- ", "");
        match v {
            serde_json::Value::Object(o) if !o.is_empty() => yaml_map(out, o, indent + 2, true),
            serde_json::Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                yaml_seq(out, a, indent + 2);
            }
            scalar => {
                let _ = writeln!(out, "{}", yaml_scalar(scalar));
            }
        }
    }
}

/// "12.3 GiB" style, for tables.
pub fn bytes(n: u64) -> String {
    crate::config::units::format_bytes(n)
}

/// How long ago a Unix-ms instant was, for tables ("4s ago").
pub fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let now = crate::domain::unix_ms_now();
    let secs = ((now - unix_ms).max(0) / 1000) as u64;
    let d = std::time::Duration::from_secs(secs);
    if secs == 0 {
        "now".into()
    } else {
        format!("{} ago", humantime::format_duration(d))
    }
}

pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_same_document() {
        let doc = serde_json::json!([
            {"name": "gpu-01", "state": "ready", "gpus": [{"index": 0, "healthy": true}],
             "labels": {}, "tags": [], "note": "no", "n": 1.5e3, "none": null,
             "odd key": "line\nbreak: # not a comment", "quote": "\"x\""},
            {"name": "yes", "gpus": [[1, 2], []]}
        ]);
        let yaml = to_yaml(&doc);
        let back: serde_json::Value = serde_yaml::from_str(&yaml).expect(&yaml);
        assert_eq!(back, doc, "{yaml}");
        assert_eq!(to_yaml(&serde_json::json!([])), "[]\n");
        // Keys in order, a sequence of maps in kubectl's compact form.
        assert!(
            yaml.starts_with("- gpus:\n  - healthy: true\n    index: 0\n  labels: {}\n"),
            "{yaml}"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["gpu-host-1".into(), "ready".into()]);
        t.row(vec!["n2".into(), "lost".into()]);
        assert_eq!(
            t.render(),
            "NAME        STATE\ngpu-host-1  ready\nn2          lost\n"
        );
    }
}
