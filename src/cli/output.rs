//! How operator commands print: aligned tables for people, JSON for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
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

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
