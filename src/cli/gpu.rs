//! `gpufleet gpu ls`: every GPU in the fleet, with health and its replica.

use crate::api::GpuView;
use crate::wire::pb;

use super::client::{connect, status_error, ClientArgs};
use super::output::{bytes, opt, print_json, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum GpuCommand {
    /// List GPUs fleet-wide, or of one node.
    Ls {
        #[arg(long)]
        node: Option<String>,
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
    let node = match cmd {
        GpuCommand::Ls { node } => node,
        GpuCommand::MarkHealthy { node, gpu } => {
            let mut c = connect(client).await?;
            c.mark_gpu_healthy(pb::GpuRef {
                node: node.clone(),
                index: gpu,
            })
            .await
            .map_err(status_error)?;
            println!("GPU {gpu} on {node} marked healthy; the next samples decide again");
            return Ok(());
        }
    };
    let mut c = connect(client).await?;
    let gpus: Vec<GpuView> = c
        .list_gpus(pb::ListGpusRequest {
            node: node.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .gpus
        .into_iter()
        .map(Into::into)
        .collect();
    if output == Output::Json {
        return print_json(&gpus);
    }
    let mut t = Table::new(&[
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
    ]);
    for g in &gpus {
        t.row(vec![
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
        ]);
    }
    t.print();
    Ok(())
}
