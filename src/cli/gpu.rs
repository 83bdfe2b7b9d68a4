//! `gpufleet gpu ls`: every GPU in the fleet, with health and its replica.

use crate::api::GpuView;
use crate::wire::pb;

use super::client::{ask, connect, status_error, ClientArgs};
use super::list::{print_list, ListArgs};
use super::output::{bytes, opt, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum GpuCommand {
    /// List GPUs fleet-wide, or of one node.
    Ls {
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Vouch for a GPU the agent marked unhealthy (after a reset, say): its
    /// health rules start afresh and placement may use it again.
    MarkHealthy {
        #[arg(long)]
        node: String,
        #[arg(long)]
        gpu: u32,
    },
}

pub async fn run(cmd: GpuCommand, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let (node, args) = match cmd {
        GpuCommand::Ls { node, list } => (node, list),
        GpuCommand::MarkHealthy { node, gpu } => {
            ask(
                client,
                pb::GpuRef {
                    node: node.clone(),
                    index: gpu,
                },
                |mut c, r| async move { c.mark_gpu_healthy(r).await },
            )
            .await?;
            println!("GPU {gpu} on {node} marked healthy; the next samples decide again");
            return Ok(());
        }
    };
    let c = connect(client).await?;
    let request = pb::ListGpusRequest {
        node: node.unwrap_or_default(),
    };
    let fetch = || {
        let (mut c, request) = (c.clone(), request.clone());
        async move {
            let gpus: Vec<GpuView> = c
                .list_gpus(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .gpus
                .into_iter()
                .map(Into::into)
                .collect();
            anyhow::Ok(gpus)
        }
    };
    print_list(&args, output, fetch, table).await
}

fn table(gpus: &[GpuView], wide: bool) -> Table {
    let mut headers = vec![
        "NODE",
        "GPU",
        "NAME",
        "MEM USED",
        "MEM TOTAL",
        "UTIL",
        "UTIL 60s",
        "TEMP",
        "POWER",
        "HEALTH",
        "REPLICA",
    ];
    if wide {
        headers.extend(["UUID", "UTIL P95 60s", "MEM MAX 60s", "XID"]);
    }
    let mut t = Table::new(&headers);
    for g in gpus {
        let mut row = vec![
            g.node.clone(),
            g.index.to_string(),
            g.name.clone(),
            bytes(g.memory_used_bytes),
            bytes(g.memory_total_bytes),
            format!("{:.0}%", g.utilization_pct),
            format!("{:.0}%", g.utilization_mean_60s),
            opt(g.temperature_c.map(|t| format!("{t:.0}C"))),
            opt(g.power_w.map(|p| format!("{p:.0}W"))),
            if g.healthy {
                "healthy".into()
            } else {
                format!("unhealthy: {}", g.health_reason)
            },
            if g.replica.is_empty() {
                "-".into()
            } else {
                g.replica.clone()
            },
        ];
        if wide {
            row.extend([
                g.uuid.clone(),
                format!("{:.0}%", g.utilization_p95_60s),
                bytes(g.memory_used_max_60s as u64),
                g.xid_errors.to_string(),
            ]);
        }
        t.row(row);
    }
    t
}
