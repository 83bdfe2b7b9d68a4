//! `gpufleet warm …`: model weights kept resident in the nodes' page caches.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::api::WarmView;
use crate::wire::pb;

use super::client::{ask, connect, status_error, ClientArgs, Control};
use super::list::{print_list, ListArgs};
use super::output::{bytes, print_data, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum WarmCommand {
    /// List warm cache entries across the fleet.
    Ls {
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Keep a model's weights resident on a node.
    Start {
        model: String,
        #[arg(long)]
        node: String,
        /// Show progress until the weights are resident (or warming fails).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
        timeout: Duration,
    },
    /// Drop a model's weights from a node's page cache.
    Evict {
        model: String,
        #[arg(long)]
        node: String,
    },
}

async fn list(c: &mut Control, node: Option<String>) -> anyhow::Result<Vec<WarmView>> {
    Ok(c.list_warm(pb::ListWarmRequest {
        node: node.unwrap_or_default(),
    })
    .await
    .map_err(status_error)?
    .into_inner()
    .entries
    .into_iter()
    .map(Into::into)
    .collect())
}

fn table(entries: &[WarmView], wide: bool) -> Table {
    let mut headers = vec![
        "NODE", "MODEL", "STATE", "RESIDENT", "TOTAL", "RATE", "WHY", "ERROR",
    ];
    if wide {
        headers.extend(["ETA", "PATH"]);
    }
    let mut t = Table::new(&headers);
    for w in entries {
        let mut row = vec![
            w.node.clone(),
            w.model.clone(),
            w.state.clone(),
            bytes(w.resident_bytes),
            bytes(w.total_bytes),
            if w.rate_bytes_per_s > 0.0 {
                format!("{}/s", bytes(w.rate_bytes_per_s as u64))
            } else {
                "-".into()
            },
            w.reason.clone(),
            if w.error.is_empty() {
                "-".into()
            } else {
                w.error.clone()
            },
        ];
        if wide {
            row.push(if w.eta_ms > 0 {
                humantime::format_duration(Duration::from_secs(w.eta_ms.div_ceil(1000))).to_string()
            } else {
                "-".into()
            });
            row.push(w.path.clone());
        }
        t.row(row);
    }
    t
}

pub async fn run(cmd: WarmCommand, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        WarmCommand::Ls { node, list: args } => {
            let c = connect(client).await?;
            let fetch = || {
                let (mut c, node) = (c.clone(), node.clone());
                async move { list(&mut c, node).await }
            };
            return print_list(&args, output, fetch, table).await;
        }
        WarmCommand::Start {
            model,
            node,
            wait,
            timeout,
        } => {
            let mut c = connect(client).await?;
            let req = pb::WarmRequest {
                model: model.clone(),
                node: node.clone(),
            };
            // Follow the node's events before asking, so the end of even a
            // quick fill is seen the moment the agent reports it.
            let events = if wait {
                let follow = pb::ListEventsRequest {
                    model: model.clone(),
                    node: node.clone(),
                    limit: 0,
                };
                Some(
                    c.follow_events(follow)
                        .await
                        .map_err(status_error)?
                        .into_inner(),
                )
            } else {
                None
            };
            c.warm_start(req).await.map_err(status_error)?;
            if !wait {
                if output.is_data() {
                    return print_data(&list(&mut c, Some(node)).await?, output);
                }
                println!(
                    "warming {model} on {node}; `gpufleet warm ls --node {node}` shows progress"
                );
                return Ok(());
            }
            let events = events.expect("followed above when waiting");
            let entry = wait_resident(&mut c, events, &model, &node, timeout).await?;
            if output.is_data() {
                return print_data(&entry, output);
            }
        }
        WarmCommand::Evict { model, node } => {
            let req = pb::WarmRequest {
                model: model.clone(),
                node: node.clone(),
            };
            let entries: Vec<WarmView> =
                ask(client, req, |mut c, r| async move { c.warm_evict(r).await })
                    .await?
                    .entries
                    .into_iter()
                    .map(Into::into)
                    .collect();
            if output.is_data() {
                return print_data(&entries, output);
            }
            // The agent never drops the weights of a replica it runs: the wish
            // waits in the node's flags until the replica stops.
            if entries
                .iter()
                .any(|w| w.model == model && w.reason == "replica")
            {
                println!(
                    "a replica of {model} runs on {node}: its weights stay in the page cache \
                     until it stops there, then they are evicted"
                );
            } else {
                println!("evicting {model} from {node}'s page cache");
            }
        }
    }
    Ok(())
}

/// Waits until the entry is resident: the coordinator's `warm-done` event
/// ends the wait the moment the agent reports it; meanwhile the entry is
/// read twice a second for the progress bar (drawn in place on a terminal).
async fn wait_resident(
    c: &mut Control,
    mut events: tonic::Streaming<pb::Event>,
    model: &str,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<WarmView> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let mut events_open = true;
    loop {
        let entries = list(c, Some(node.to_string())).await?;
        if let Some(w) = entries.into_iter().find(|w| w.model == model) {
            let pct = if w.total_bytes > 0 {
                w.resident_bytes as f64 / w.total_bytes as f64 * 100.0
            } else {
                0.0
            };
            let filled = (pct / 5.0).round() as usize;
            let line = format!(
                "[{}{}] {pct:5.1}%  {} / {}  {}  eta {}",
                "#".repeat(filled.min(20)),
                " ".repeat(20 - filled.min(20)),
                bytes(w.resident_bytes),
                bytes(w.total_bytes),
                if w.rate_bytes_per_s > 0.0 {
                    format!("{}/s", bytes(w.rate_bytes_per_s as u64))
                } else {
                    "-".into()
                },
                if w.eta_ms > 0 {
                    humantime::format_duration(Duration::from_secs(w.eta_ms / 1000)).to_string()
                } else {
                    "-".into()
                },
            );
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            match w.state.as_str() {
                "resident" => {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("{model} is resident on {node}");
                    return Ok(w);
                }
                "failed" => {
                    if tty {
                        eprintln!();
                    }
                    anyhow::bail!("warming {model} on {node} failed: {}", w.error);
                }
                _ => {}
            }
        }
        let progress = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!(
                "{model} is not resident on {node} after {}",
                humantime::format_duration(timeout)
            ),
            event = events.message(), if events_open => match event {
                // Read the entry again at once: it is resident or failed.
                Ok(Some(e)) if e.kind == "warm-done" => {}
                Ok(Some(_)) => {}
                // The stream ended or broke: the progress reads still see
                // the end, a little later.
                Ok(None) | Err(_) => events_open = false,
            },
            _ = progress => {}
        }
    }
}
