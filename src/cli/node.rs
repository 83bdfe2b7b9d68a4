//! `gpufleet node …`: the fleet's hosts.

use crate::api::NodeView;
use crate::wire::pb;

use super::client::{ask, connect, status_error, ClientArgs};
use super::list::{print_list, ListArgs};
use super::output::{ago, bytes, print_data, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List nodes with their state and GPUs.
    Ls {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one node: host facts, GPUs, replicas.
    Show { node: String },
    /// Place no new replicas on the node; running ones stay.
    Cordon { node: String },
    /// Let the node take replicas again (also cancels a drain).
    Uncordon { node: String },
    /// Move the node's replicas elsewhere (replacements become ready first),
    /// then leave it cordoned.
    Drain {
        node: String,
        /// Retire whatever is left on the node after this long; it stops after
        /// the coordinator's retire_grace [default: 30m].
        #[arg(long, value_parser = parse_deadline)]
        deadline: Option<std::time::Duration>,
    },
}

/// A drain deadline: the Control API takes whole milliseconds and reads 0 as
/// "not given" (the default 30m), so a shorter one would silently become
/// half an hour.
fn parse_deadline(s: &str) -> Result<std::time::Duration, String> {
    let d = super::parse_duration(s)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!(
            "a drain deadline of `{s}` is too short; allowed: 1s or more (without --deadline: 30m)"
        ));
    }
    Ok(d)
}

pub async fn run(cmd: NodeCommand, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls { list } => {
            let c = connect(client).await?;
            let fetch = || {
                let mut c = c.clone();
                async move {
                    let nodes: Vec<NodeView> = c
                        .list_nodes(pb::ListNodesRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .nodes
                        .into_iter()
                        .map(Into::into)
                        .collect();
                    anyhow::Ok(nodes)
                }
            };
            return print_list(&list, output, fetch, table).await;
        }
        NodeCommand::Cordon { node } => {
            let n: NodeView = ask(client, pb::NodeRef { name: node }, |mut c, r| async move {
                c.cordon_node(r).await
            })
            .await?
            .into();
            return done(&n, output, "cordoned: no new replicas will be placed on it");
        }
        NodeCommand::Uncordon { node } => {
            let n: NodeView = ask(client, pb::NodeRef { name: node }, |mut c, r| async move {
                c.uncordon_node(r).await
            })
            .await?
            .into();
            return done(&n, output, "uncordoned: it takes replicas again");
        }
        NodeCommand::Drain { node, deadline } => {
            let req = pb::DrainNodeRequest {
                name: node,
                deadline_ms: deadline.map(|d| d.as_millis() as u64).unwrap_or(0),
            };
            let n: NodeView = ask(client, req, |mut c, r| async move { c.drain_node(r).await })
                .await?
                .into();
            return done(&n, output, "draining: replicas move elsewhere; follow with `gpufleet events --node NODE --follow`");
        }
        NodeCommand::Show { node } => {
            let n: NodeView = ask(client, pb::NodeRef { name: node }, |mut c, r| async move {
                c.get_node(r).await
            })
            .await?
            .into();
            if output.is_data() {
                return print_data(&n, output);
            }
            println!("Node:        {}", n.name);
            println!("State:       {}", n.state.as_str());
            println!("Address:     {}", n.address);
            println!(
                "Last seen:   {} ({})",
                n.last_seen,
                ago(n.last_seen_unix_ms)
            );
            println!("Agent:       {}", n.agent_version);
            println!(
                "Host:        {} · {} · kernel {}",
                n.host.hostname, n.host.os, n.host.kernel
            );
            println!(
                "CPUs:        {} (load {:.2} {:.2} {:.2}, {:.0}% busy)",
                n.host.cpus,
                n.host_sample.load1,
                n.host_sample.load5,
                n.host_sample.load15,
                n.host_sample.cpu_pct
            );
            println!(
                "Memory:      {} used, {} available, {} total, page cache {}",
                bytes(n.host_sample.memory_used_bytes),
                bytes(n.host_sample.memory_available_bytes),
                bytes(n.host.memory_total_bytes),
                bytes(n.host_sample.page_cache_bytes)
            );
            println!(
                "State dir:   {} free of {}",
                bytes(n.host_sample.state_dir_free_bytes),
                bytes(n.host_sample.state_dir_total_bytes)
            );
            if !n.labels.is_empty() {
                let labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("Labels:      {}", labels.join(", "));
            }
            println!();
            let mut t = Table::new(&[
                "GPU",
                "NAME",
                "UUID",
                "MEM USED",
                "MEM TOTAL",
                "UTIL",
                "HEALTH",
            ]);
            for g in &n.gpus {
                t.row(vec![
                    g.index.to_string(),
                    g.name.clone(),
                    g.uuid.clone(),
                    bytes(g.memory_used_bytes),
                    bytes(g.memory_total_bytes),
                    format!("{:.0}%", g.utilization_pct),
                    if g.healthy {
                        "healthy".into()
                    } else {
                        format!("unhealthy: {}", g.health_reason)
                    },
                ]);
            }
            t.print();
        }
    }
    Ok(())
}

fn table(nodes: &[NodeView], wide: bool) -> Table {
    let mut headers = vec![
        "NAME",
        "STATE",
        "GPUS",
        "HEALTHY",
        "GPU MEM USED",
        "REPLICAS",
        "ADDRESS",
        "LAST SEEN",
    ];
    if wide {
        headers.extend(["CPUS", "MEMORY", "GPU MODEL", "AGENT", "LABELS"]);
    }
    let mut t = Table::new(&headers);
    for n in nodes {
        let used: u64 = n.gpus.iter().map(|g| g.memory_used_bytes).sum();
        let total: u64 = n.gpus.iter().map(|g| g.memory_total_bytes).sum();
        let mut row = vec![
            n.name.clone(),
            n.state.as_str().into(),
            n.gpus.len().to_string(),
            n.gpus.iter().filter(|g| g.healthy).count().to_string(),
            format!("{} / {}", bytes(used), bytes(total)),
            n.replicas.to_string(),
            n.address.clone(),
            ago(n.last_seen_unix_ms),
        ];
        if wide {
            let mut models: Vec<&str> = n.gpus.iter().map(|g| g.name.as_str()).collect();
            models.dedup();
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row.extend([
                n.host.cpus.to_string(),
                bytes(n.host.memory_total_bytes),
                if models.is_empty() {
                    "-".into()
                } else {
                    models.join(",")
                },
                n.agent_version.clone(),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]);
        }
        t.row(row);
    }
    t
}

fn done(n: &NodeView, output: Output, what: &str) -> anyhow::Result<()> {
    if output.is_data() {
        return print_data(n, output);
    }
    println!("node {} {what}", n.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;

    fn drain(deadline: &str) -> Result<Option<Duration>, String> {
        let cli = Cli::try_parse_from([
            "gpufleet",
            "node",
            "drain",
            "gpu-01",
            "--deadline",
            deadline,
        ])
        .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Node {
                cmd: super::NodeCommand::Drain { deadline, .. },
            } => Ok(deadline),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_drain_deadline_under_a_second_is_refused_not_taken_for_the_default() {
        assert_eq!(drain("10m"), Ok(Some(Duration::from_secs(600))));
        assert_eq!(drain("1s"), Ok(Some(Duration::from_secs(1))));
        for short in ["0s", "500ms", "900us"] {
            let err = drain(short).unwrap_err();
            assert!(
                err.contains("too short; allowed: 1s or more"),
                "{short}: {err}"
            );
        }
    }
}
