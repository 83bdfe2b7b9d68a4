//! `gpufleet tls`: make the fleet's CA and certificates.

use std::path::PathBuf;

use clap::Subcommand;

use crate::security::certs::{self, InitPlan, DEFAULT_COORDINATOR_NAMES};

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a CA, the coordinator's certificate and one per agent.
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write the PEM files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names or IPs agents and the CLI use to reach the coordinator
    /// (comma-separated or repeated) [default: localhost,127.0.0.1].
    #[arg(long = "coordinator-name", value_delimiter = ',')]
    pub coordinator_names: Vec<String>,
    /// Node names of the agents to make certificates for (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Validity of every certificate, the CA's included.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let names = if args.coordinator_names.is_empty() {
        DEFAULT_COORDINATOR_NAMES.join(", ")
    } else {
        args.coordinator_names.join(", ")
    };
    let written = certs::init(&InitPlan {
        out: args.out.clone(),
        coordinator_names: args.coordinator_names,
        agents: args.agents.clone(),
        days: args.days,
        force: args.force,
    })
    .map_err(|e| {
        if e.is_usage() {
            super::usage(e)
        } else {
            e.into()
        }
    })?;
    println!(
        "wrote {} files to {} (keys are 0600), valid {} days:",
        written.len(),
        args.out.display(),
        args.days
    );
    for path in &written {
        println!("  {}", path.display());
    }
    println!("\ncoordinator certificate names: {names}");
    println!(
        "  coordinator host: ca.pem, coordinator.pem, coordinator-key.pem  ([tls] ca, cert, key)"
    );
    for agent in &args.agents {
        println!("  host {agent}: ca.pem, {agent}.pem, {agent}-key.pem  ([tls] ca, cert, key; coordinator = \"https://…\")");
    }
    println!(
        "  operators: ca.pem as GPUFLEET_CA; keep ca-key.pem offline, it can mint any certificate"
    );
    Ok(())
}
