//! The `gpufleet` command line: the daemons' entry points and the operator
//! commands, one file per noun.

pub mod client;
pub mod coordinators;
pub mod event;
pub mod explain;
pub mod gateway;
pub mod gpu;
pub mod list;
pub mod manual;
pub mod model;
pub mod node;
pub mod output;
pub mod replica;
pub mod simulate;
pub mod store;
pub mod tls;
pub mod version;
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
    /// How to print: table (default), wide (more columns), json or yaml.
    #[arg(short = 'o', long, value_enum, global = true)]
    pub output: Option<Output>,
    /// Where the coordinator is and how to talk to it; like every flag above,
    /// these go before or after the command (`gpufleet --coordinator URL node ls`).
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (the fleet's control plane).
    Coordinator(CoordinatorArgs),
    /// Run the agent on a GPU host.
    Agent(AgentArgs),
    /// Run the request gateway (OpenAI-compatible, one address for every
    /// model), or `gateway status` to see one.
    Gateway(GatewayArgs),
    /// Run a whole local fleet on simulated GPUs, or the demo server / load generator.
    Demo(crate::demo::DemoArgs),
    /// Replay a request trace through gpufleet's autoscaling and baselines on a virtual clock.
    Simulate(simulate::SimulateArgs),
    /// Load generators that measure a running coordinator (`bench swarm`).
    Bench {
        #[command(subcommand)]
        cmd: crate::bench::BenchCommand,
    },
    /// Nodes (GPU hosts) of the fleet.
    Node {
        #[command(subcommand)]
        cmd: node::NodeCommand,
    },
    /// GPUs across the fleet.
    Gpu {
        #[command(subcommand)]
        cmd: gpu::GpuCommand,
    },
    /// Models: apply specs, list, scale.
    Model {
        #[command(subcommand)]
        cmd: model::ModelCommand,
    },
    /// Replicas (model-server processes).
    Replica {
        #[command(subcommand)]
        cmd: replica::ReplicaCommand,
    },
    /// Model weights kept warm in the nodes' page caches.
    Warm {
        #[command(subcommand)]
        cmd: warm::WarmCommand,
    },
    /// Why a model has the replicas it has: decisions with their inputs.
    Explain { model: String },
    /// What the fleet did and decided.
    Events {
        #[command(flatten)]
        args: event::EventsArgs,
    },
    /// Certificates for mTLS between agents and the coordinator.
    Tls {
        #[command(subcommand)]
        cmd: tls::TlsCommand,
    },
    /// This binary's version, and the coordinator's when it answers.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (gpufleet.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CoordinatorArgs {
    #[command(subcommand)]
    pub store: Option<StoreCommand>,
    /// Config file [default: /etc/gpufleet/coordinator.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:7460].
    #[arg(long, value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// HTTP listen address (/metrics, /healthz, /v1/endpoints) [default: 0.0.0.0:7461].
    #[arg(long, value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,
    /// Where the store lives [default: /var/lib/gpufleet/coordinator].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Copies of the coordinator's store (`backup` works while the coordinator
/// runs, through its API with an admin token; `restore` needs it stopped),
/// and the coordinators' status.
#[derive(Debug, Clone, Subcommand)]
pub enum StoreCommand {
    /// The coordinators sharing the store: members, leader, epoch, etcd's health.
    Status,
    /// Copy the store to FILE (a new file), verified.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        at: StoreLocation,
    },
    /// Replace the store with FILE (a backup or a snapshot), verified first;
    /// the store it replaces is kept in DATA_DIR/snapshots.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        at: StoreLocation,
    },
}

/// Which store: the config's `data_dir`, or `--data-dir`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreLocation {
    /// Config file [default: /etc/gpufleet/coordinator.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the store lives [default: /var/lib/gpufleet/coordinator].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    #[command(subcommand)]
    pub cmd: Option<GatewayCommand>,
    /// Config file [default: /etc/gpufleet/gateway.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Client listen address [default: 0.0.0.0:7470]. The coordinator is
    /// the global --coordinator [default: the config file's, else
    /// http://127.0.0.1:7460].
    #[arg(long, value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum GatewayCommand {
    /// What a gateway holds and sends, per model and replica.
    Status(gateway::StatusArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Config file [default: /etc/gpufleet/agent.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    #[arg(long, value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,
    /// Stop every replica when the agent exits (the demo's throwaway fleet).
    /// Without it replicas outlive the agent and are re-adopted.
    #[arg(long, hide = true)]
    pub stop_replicas_on_exit: bool,
}

fn parse_backend(s: &str) -> Result<GpuBackend, String> {
    s.parse()
}

/// A listen address as the config files take it, with their message.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an address; use IP:PORT (port 0–65535), e.g. 0.0.0.0:7470".to_string())
}

/// Exit code for bad configuration (sysexits EX_USAGE / EX_CONFIG family).
pub const EXIT_CONFIG: u8 = 64;

/// Exit code for a command line that cannot run as given, as clap exits
/// for the errors it finds itself.
pub const EXIT_USAGE: u8 = 2;

/// A flag's value, or a mix of flags, that a command refuses after clap has
/// parsed them (a range clap cannot express, a flag another one makes
/// required): the process exits `EXIT_USAGE`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Wraps a refusal of the command line as a `UsageError`.
pub fn usage(why: impl std::fmt::Display) -> anyhow::Error {
    UsageError(why.to_string()).into()
}

/// Runs an operator command with the global flags it was given.
pub async fn run_operator(
    command: Command,
    client: ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let client = &client;
    match command {
        Command::Explain { model } => explain::run(model, client, output).await,
        Command::Warm { cmd } => warm::run(cmd, client, output).await,
        Command::Node { cmd } => node::run(cmd, client, output).await,
        Command::Gpu { cmd } => gpu::run(cmd, client, output).await,
        Command::Model { cmd } => model::run(cmd, client, output).await,
        Command::Replica { cmd } => replica::run(cmd, client, output).await,
        Command::Events { args } => event::run(args, client, output).await,
        Command::Tls { cmd } => tls::run(cmd),
        Command::Version => version::run(client, output).await,
        Command::Bench { cmd } => crate::bench::run(cmd, client, output).await,
        Command::Completions { shell } => {
            manual::completions(shell);
            Ok(())
        }
        Command::Man { out_dir } => manual::man_pages(&out_dir),
        Command::Coordinator(_)
        | Command::Agent(_)
        | Command::Gateway(_)
        | Command::Demo(_)
        | Command::Simulate(_) => {
            unreachable!("daemon commands are dispatched by main")
        }
    }
}

impl Command {
    /// The long-running roles, as opposed to operator commands that print
    /// and exit.
    /// `gpufleet demo` itself (not `demo server` or `demo load`).
    pub fn is_fleet_demo(&self) -> bool {
        matches!(self, Command::Demo(d) if d.cmd.is_none())
    }

    pub fn is_daemon(&self) -> bool {
        match self {
            Command::Coordinator(_) | Command::Agent(_) => true,
            Command::Gateway(g) => g.cmd.is_none(),
            // The fleet demo runs daemons and serves; `demo load` prints a report.
            Command::Demo(d) => !matches!(d.cmd, Some(crate::demo::DemoCommand::Load(_))),
            _ => false,
        }
    }
}

/// Ends the process quietly, with the status a shell gives a command killed
/// by SIGPIPE (141), when printing fails because stdout's reader is gone.
/// SIGPIPE itself stays ignored, as Rust sets it: restoring its default
/// would also kill the CLI when a coordinator closes the connection under a
/// write (a TLS port spoken to in plain HTTP/2, say).
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
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
