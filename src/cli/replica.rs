//! `gpufleet replica …`: the model-server processes across the fleet.

use crate::api::ReplicaView;
use crate::wire::pb;

use super::client::{connect, status_error, ClientArgs};
use super::list::{print_list, ListArgs};
use super::output::{ago, bytes, opt, print_data, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum ReplicaCommand {
    /// List replicas, optionally of one model or node.
    Ls {
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// The last lines of a replica's server log (fetched from its node).
    Logs {
        id: String,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: u32,
        /// Keep printing what the server writes, until Ctrl-C or until its
        /// log is gone.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

pub async fn run(cmd: ReplicaCommand, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let (model, node, args) = match cmd {
        ReplicaCommand::Ls { model, node, list } => (model, node, list),
        ReplicaCommand::Logs { id, lines, follow } => {
            let mut c = connect(client).await?;
            let r = c
                .replica_logs(pb::ReplicaLogsRequest {
                    id: id.clone(),
                    lines,
                    follow: false,
                    offset: 0,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if output.is_data() && !follow {
                return print_data(
                    &serde_json::json!({"id": r.id, "node": r.node, "lines": r.lines}),
                    output,
                );
            }
            print_log_lines(&r.lines, output)?;
            if follow {
                return follow_log(&mut c, id, r.offset, output).await;
            }
            return Ok(());
        }
    };
    let c = connect(client).await?;
    let request = pb::ListReplicasRequest {
        model: model.unwrap_or_default(),
        node: node.unwrap_or_default(),
    };
    let fetch = || {
        let (mut c, request) = (c.clone(), request.clone());
        async move {
            let replicas: Vec<ReplicaView> = c
                .list_replicas(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .replicas
                .into_iter()
                .map(Into::into)
                .collect();
            anyhow::Ok(replicas)
        }
    };
    print_list(&args, output, fetch, table).await
}

/// While following, JSON comes as one `{"line": …}` object per line.
fn print_log_lines(lines: &[String], output: Output) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if output == Output::Json {
            writeln!(out, "{}", serde_json::json!({ "line": line }))?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Asks the node for what was written since `offset`, every half second,
/// until Ctrl-C; ends with the reason when the log can no longer be read
/// (the replica was removed, say).
async fn follow_log(
    c: &mut super::client::Control,
    id: String,
    mut offset: u64,
    output: Output,
) -> anyhow::Result<()> {
    let every = std::time::Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let r = c
            .replica_logs(pb::ReplicaLogsRequest {
                id: id.clone(),
                lines: 0,
                follow: true,
                offset,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        print_log_lines(&r.lines, output)?;
        offset = r.offset;
    }
}

pub fn table(replicas: &[ReplicaView], wide: bool) -> Table {
    let mut headers = vec![
        "ID", "MODEL", "NODE", "STATE", "PID", "PORT", "GPUS", "RESTARTS", "ONGOING", "P95",
        "SIGNALS", "REASON",
    ];
    if wide {
        headers.extend(["GPU MEM", "STARTED", "READY", "SPEC"]);
    }
    let mut t = Table::new(&headers);
    for r in replicas {
        let s = &r.status;
        let gpus: Vec<String> = s.gpus.iter().map(u32::to_string).collect();
        let mut row = vec![
            s.id.clone(),
            s.model.clone(),
            r.node.clone(),
            state_cell(s),
            if s.pid == 0 {
                "-".into()
            } else {
                s.pid.to_string()
            },
            if s.port == 0 {
                "-".into()
            } else {
                s.port.to_string()
            },
            gpus.join(","),
            s.restarts.to_string(),
            if s.signals.fresh {
                format!("{:.0}", s.signals.ongoing())
            } else {
                "-".into()
            },
            opt(s
                .signals
                .p95_latency_s
                .map(|p| format!("{:.0}ms", p * 1000.0))),
            r.signals_health.to_string(),
            if s.reason.is_empty() {
                "-".into()
            } else {
                s.reason.clone()
            },
        ];
        if wide {
            row.extend([
                bytes(s.gpu_memory_used_bytes),
                ago(s.started_unix_ms),
                ago(s.ready_unix_ms),
                s.spec_hash.chars().take(12).collect(),
            ]);
        }
        t.row(row);
    }
    t
}

/// The state, marked when the server runs as root (the agent's
/// `allow_root_replicas` let it): that should never go unnoticed.
fn state_cell(s: &crate::domain::ReplicaStatus) -> String {
    if s.runs_as_root {
        format!("{} AS ROOT", s.state)
    } else {
        s.state.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ReplicaState, ReplicaStatus};

    #[test]
    fn a_root_replica_is_marked() {
        let mut s = ReplicaStatus {
            state: ReplicaState::Ready,
            ..Default::default()
        };
        assert_eq!(state_cell(&s), "ready");
        s.runs_as_root = true;
        assert_eq!(state_cell(&s), "ready AS ROOT");
        let json = serde_json::to_value(ReplicaView {
            node: "gpu-1".into(),
            status: s,
            signals_health: crate::api::SignalsHealth::Ok,
        })
        .unwrap();
        assert_eq!(json["runs_as_root"], true, "{json}");
        assert_eq!(json["signals_health"], "ok", "{json}");
        assert!(json.get("assignment_token").is_none(), "{json}");
    }
}
