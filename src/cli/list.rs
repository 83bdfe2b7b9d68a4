//! What every list command shares: print once, or keep watching and print
//! again whenever the list changes (`--watch`), in any output format.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;

use super::output::{Output, Table};

/// Flags of every `… ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Keep watching: print the list again whenever it changes (Ctrl-C stops).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often to ask the coordinator while watching.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration, value_name = "DURATION")]
    pub watch_interval: Duration,
}

/// Fetches the list, renders it as `output` asks (a table from `table`, with
/// its wide columns for `-o wide`), and prints it; with `--watch`, repeats
/// until Ctrl-C, printing only when what it would print has changed. While
/// watching, JSON comes one compact document per line and YAML as documents
/// separated by `---`, so a script can read each version as it comes.
pub async fn print_list<T, F, Fut>(
    args: &ListArgs,
    output: Output,
    mut fetch: F,
    table: impl Fn(&[T], bool) -> Table,
) -> anyhow::Result<()>
where
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<T>>>,
{
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<String> = None;
    loop {
        let items = fetch().await?;
        let text = render(&items, output, args.watch, &table)?;
        if last.as_deref() != Some(text.as_str()) {
            let mut out = std::io::stdout().lock();
            if args.watch && last.is_some() {
                match output {
                    Output::Yaml => writeln!(out, "---")?,
                    Output::Json => {}
                    // A terminal shows the latest table in place, as watch(1) does.
                    Output::Table | Output::Wide if tty => write!(out, "\x1b[H\x1b[2J")?,
                    Output::Table | Output::Wide => writeln!(out)?,
                }
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            last = Some(text);
        }
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.watch_interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn render<T: Serialize>(
    items: &[T],
    output: Output,
    watching: bool,
    table: &impl Fn(&[T], bool) -> Table,
) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json if watching => serde_json::to_string(items)? + "\n",
        Output::Json | Output::Yaml => output
            .document(items)?
            .expect("json and yaml are document formats"),
        Output::Table | Output::Wide => table(items, output == Output::Wide).render(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(items: &[u32], wide: bool) -> Table {
        let mut t = Table::new(if wide { &["N", "SQUARE"] } else { &["N"] });
        for n in items {
            let mut row = vec![n.to_string()];
            if wide {
                row.push((n * n).to_string());
            }
            t.row(row);
        }
        t
    }

    #[test]
    fn each_format_renders_the_same_list() {
        let items = [2u32, 3];
        let r = |o, w| render(&items, o, w, &table).unwrap();
        assert_eq!(r(Output::Table, false), "N\n2\n3\n");
        assert_eq!(r(Output::Wide, false), "N  SQUARE\n2  4\n3  9\n");
        assert_eq!(
            r(Output::Json, true),
            "[2,3]\n",
            "one line per version while watching"
        );
        assert_eq!(r(Output::Json, false), "[\n  2,\n  3\n]\n");
        assert_eq!(r(Output::Yaml, false), "- 2\n- 3\n");
    }
}
