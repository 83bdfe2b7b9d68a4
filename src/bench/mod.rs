//! `gpufleet bench`: load generators that measure a running coordinator.
//! `bench swarm` plays thousands of agents over real gRPC sessions.

pub mod measure;
pub mod swarm;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Simulate N agents, each on its own gRPC session, against a running
    /// coordinator, and measure it: report round trip, scale-up latency,
    /// session setup, the coordinator's CPU, memory and tick time.
    Swarm(swarm::SwarmArgs),
}

pub async fn run(
    cmd: BenchCommand,
    client: &crate::cli::client::ClientArgs,
    output: crate::cli::output::Output,
) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Swarm(args) => swarm::run(args, client, output).await,
    }
}
