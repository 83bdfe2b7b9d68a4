//! `gpufleet demo`: a whole local fleet on simulated GPUs, plus the demo model
//! server and load generator it uses.

pub mod arrivals;
pub mod balancer;
pub mod endpoints;
pub mod fleet;
pub mod latency;
pub mod load;
pub mod ramp;
pub mod server;
pub mod weights;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub cmd: Option<DemoCommand>,
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum DemoCommand {
    /// A demo model server: loads its weights, then serves completions with
    /// vLLM-style metrics.
    Server(server::ServerArgs),
    /// An open-loop load generator for a server or a model's replicas.
    Load(load::LoadArgs),
}

/// Runs a demo command. `log_format` is for the fleet demo, which sets up
/// logging itself (to a file while its live view is on a terminal); the
/// others log as the rest of the binary does, set up by the caller.
pub async fn run(
    args: DemoArgs,
    output: crate::cli::output::Output,
    log_format: crate::logging::LogFormat,
) -> anyhow::Result<()> {
    match args.cmd {
        Some(DemoCommand::Server(a)) => server::run_server(a).await,
        Some(DemoCommand::Load(mut a)) => {
            a.output = output;
            let report =
                load::run_load(a)
                    .await
                    .map_err(|e| match e.downcast_ref::<load::LoadError>() {
                        Some(l) if l.is_usage() => crate::cli::usage(l),
                        _ => e,
                    })?;
            load::print_report(&report, output);
            Ok(())
        }
        None => fleet::run(args.fleet, log_format).await,
    }
}
