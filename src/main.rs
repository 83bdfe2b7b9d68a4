//! The `gpufleet` binary: parse the command line, set up logging, load and
//! validate config (exit 64 when it is bad), run the role, stop on a signal.

use std::process::ExitCode;

use clap::Parser;

use gpufleet::cli::{
    self, AgentArgs, Cli, Command, CoordinatorArgs, GatewayArgs, GatewayCommand, EXIT_CONFIG,
};
use gpufleet::config::{
    AgentConfig, AgentOverrides, CoordinatorConfig, CoordinatorOverrides, GatewayConfig,
    GatewayOverrides,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.is_daemon() {
        // A closed pipe (`gpufleet model ls | head -1`) makes printing panic;
        // an operator command ends quietly instead, as other Unix tools do.
        gpufleet::cli::quiet_on_closed_stdout();
    }
    // The fleet demo sets up its own logging: its live view owns the terminal.
    if !cli.command.is_fleet_demo() {
        gpufleet::logging::init(cli.log_format);
    }
    let log_format = cli.log_format;
    let output = cli.output.unwrap_or_default();
    let client = cli.client;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Coordinator(args) => coordinator(args, client, output).await,
            Command::Agent(args) => agent(args, client.coordinator).await,
            Command::Gateway(args) => gateway(args, client.coordinator, output).await,
            Command::Demo(args) => gpufleet::demo::run(args, output, log_format)
                .await
                .map_err(Failure::Run),
            Command::Simulate(mut args) => {
                args.output = output;
                cli::simulate::run(args).map_err(Failure::Run)
            }
            other => cli::run_operator(other, client, output)
                .await
                .map_err(Failure::Run),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        // The reader of stdout went away (`| head`): nothing to say to anyone.
        Err(Failure::Run(e)) if closed_stdout(&e) => ExitCode::from(141),
        Err(Failure::Run(e)) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<gpufleet::config::Misconfigured>()
                .is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else if e.chain().any(|c| c.is::<cli::UsageError>()) {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

enum Failure {
    Config(String),
    Run(anyhow::Error),
}

async fn coordinator(
    args: CoordinatorArgs,
    client: cli::client::ClientArgs,
    output: cli::output::Output,
) -> Result<(), Failure> {
    match args.store {
        Some(cli::StoreCommand::Status) => {
            return cli::coordinators::status(&client, output)
                .await
                .map_err(Failure::Run)
        }
        Some(cmd) => return cli::store::run(cmd, &client).await.map_err(Failure::Run),
        None => {}
    }
    let cfg = CoordinatorConfig::load(&CoordinatorOverrides {
        config: args.config,
        listen: args.listen,
        http_listen: args.http_listen,
        data_dir: args.data_dir,
    })
    .map_err(|e| Failure::Config(e.to_string()))?;
    gpufleet::coordinator::run(cfg, cli::shutdown_signal())
        .await
        .map_err(Failure::Run)
}

async fn agent(args: AgentArgs, coordinator: Option<String>) -> Result<(), Failure> {
    let cfg = AgentConfig::load(&AgentOverrides {
        config: args.config,
        coordinator,
        node_name: args.node_name,
        state_dir: args.state_dir,
        gpu_backend: args.gpu_backend,
        simulated_gpus: args.simulated_gpus,
        http_listen: args.http_listen,
    })
    .map_err(|e| Failure::Config(e.to_string()))?;
    let options = gpufleet::agent::RunOptions {
        stop_replicas_on_exit: args.stop_replicas_on_exit,
    };
    gpufleet::agent::run(cfg, options, cli::shutdown_signal())
        .await
        .map_err(Failure::Run)
}

async fn gateway(
    args: GatewayArgs,
    coordinator: Option<String>,
    output: cli::output::Output,
) -> Result<(), Failure> {
    if let Some(GatewayCommand::Status(a)) = args.cmd {
        return cli::gateway::run(a, output).await.map_err(Failure::Run);
    }
    let cfg = GatewayConfig::load(&GatewayOverrides {
        config: args.config,
        listen: args.listen,
        coordinator,
    })
    .map_err(|e| Failure::Config(e.to_string()))?;
    gpufleet::gateway::run(cfg, cli::shutdown_signal())
        .await
        .map_err(Failure::Run)
}
