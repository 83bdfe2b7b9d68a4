//! The `gpufleet` command line: the daemons' entry points and the operator
//! commands, one file per noun.

pub mod client;
pub mod event;
pub mod explain;
pub mod gpu;
pub mod model;
pub mod node;
pub mod output;
pub mod replica;
pub mod simulate;
pub mod tls;
pub mod warm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::agent::gpu::GpuBackend;
use crate::logging::LogFormat;

use client::ClientArgs;
use output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "gpufleet",
    version,
    about = "Run model servers on bare-metal GPU fleets"
)]
pub struct Cli {
    /// Log format: auto picks the journal under systemd, else text.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (the fleet's control plane).
    Coordinator(CoordinatorArgs),
    /// Run the agent on a GPU host.
    Agent(AgentArgs),
    /// Run a whole local fleet on simulated GPUs, or the demo server / load generator.
    Demo(crate::demo::DemoArgs),
    /// Replay a request trace through gpufleet's autoscaling and baselines on a virtual clock.
    Simulate(simulate::SimulateArgs),
    /// Nodes (GPU hosts) of the fleet.
    Node {
        #[command(subcommand)]
        cmd: node::NodeCommand,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// GPUs across the fleet.
    Gpu {
        #[command(subcommand)]
        cmd: gpu::GpuCommand,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// Models: apply specs, list, scale.
    Model {
        #[command(subcommand)]
        cmd: model::ModelCommand,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// Replicas (model-server processes).
    Replica {
        #[command(subcommand)]
        cmd: replica::ReplicaCommand,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// Model weights kept warm in the nodes' page caches.
    Warm {
        #[command(subcommand)]
        cmd: warm::WarmCommand,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// Why a model has the replicas it has: decisions with their inputs.
    Explain {
        model: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What the fleet did and decided.
    Events {
        #[command(flatten)]
        args: event::EventsArgs,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Certificates for mTLS between agents and the coordinator.
    Tls {
        #[command(subcommand)]
        cmd: tls::TlsCommand,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArgs {
    /// Config file [default: /etc/gpufleet/coordinator.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:7460].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// HTTP listen address (/metrics, /healthz, /v1/endpoints) [default: 0.0.0.0:7461].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Where the store lives [default: /var/lib/gpufleet/coordinator].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Config file [default: /etc/gpufleet/agent.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Coordinator URL [default: http://127.0.0.1:7460].
    #[arg(long, env = "GPUFLEET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// This node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Replica records and logs [default: /var/lib/gpufleet].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_parser = parse_backend)]
    pub gpu_backend: Option<GpuBackend>,
    /// Number of simulated GPUs (with --gpu-backend simulated).
    #[arg(long)]
    pub simulated_gpus: Option<u32>,
    /// HTTP listen address (/metrics, /healthz) [default: 127.0.0.1:7462].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Stop every replica when the agent exits (the demo's throwaway fleet).
    /// Without it replicas outlive the agent and are re-adopted.
    #[arg(long, hide = true)]
    pub stop_replicas_on_exit: bool,
}

fn parse_backend(s: &str) -> Result<GpuBackend, String> {
    s.parse()
}

/// Exit code for bad configuration (sysexits EX_USAGE / EX_CONFIG family).
pub const EXIT_CONFIG: u8 = 64;

/// Runs an operator command.
pub async fn run_operator(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Explain {
            model,
            client,
            output,
        } => explain::run(model, &client, output).await,
        Command::Warm {
            cmd,
            client,
            output,
        } => warm::run(cmd, &client, output).await,
        Command::Node {
            cmd,
            client,
            output,
        } => node::run(cmd, &client, output).await,
        Command::Gpu {
            cmd,
            client,
            output,
        } => gpu::run(cmd, &client, output).await,
        Command::Model {
            cmd,
            client,
            output,
        } => model::run(cmd, &client, output).await,
        Command::Replica {
            cmd,
            client,
            output,
        } => replica::run(cmd, &client, output).await,
        Command::Events {
            args,
            client,
            output,
        } => event::run(args, &client, output).await,
        Command::Tls { cmd } => tls::run(cmd),
        Command::Coordinator(_) | Command::Agent(_) | Command::Demo(_) | Command::Simulate(_) => {
            unreachable!("daemon commands are dispatched by main")
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered now, not at the first poll: a SIGTERM that arrives between
    // READY=1 and the first poll must stop the process gracefully, not kill it.
    let term = signal(SignalKind::terminate());
    async move {
        let mut term = match term {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}

/// Parses a humantime duration flag ("30s", "5m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::units::parse_duration(s)
}
