//! The CLI's connection to the coordinator's Control API.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::anyhow;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::security::{tls, BearerToken};
use crate::wire::pb::control_client::ControlClient;

pub type Control = ControlClient<InterceptedService<Channel, BearerToken>>;

/// Where the CLI looks for the coordinator when neither `--coordinator` nor
/// `GPUFLEET_COORDINATOR` says.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7460";

/// Options every operator command shares (the agent reads `--coordinator` too).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Coordinator gRPC URL (`https://` means TLS) [default: http://127.0.0.1:7460;
    /// for the agent: its config file].
    #[arg(long, env = "GPUFLEET_COORDINATOR", global = true, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Give up on a coordinator that does not answer a request within this long.
    #[arg(long, default_value = "15s", value_parser = super::parse_duration, global = true, value_name = "DURATION")]
    pub request_timeout: Duration,
    /// CA bundle to verify the coordinator with (needs an https:// URL).
    #[arg(long, env = "GPUFLEET_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// File holding the Control API token [default: $GPUFLEET_TOKEN]. There is
    /// no flag for the token itself: it would show in `ps`.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    #[arg(skip = std::env::var("GPUFLEET_TOKEN").ok())]
    pub token_env: Option<String>,
}

impl ClientArgs {
    /// No TLS, no token: the demo's own local coordinator.
    pub fn plain(coordinator: String) -> ClientArgs {
        ClientArgs {
            coordinator: Some(coordinator),
            request_timeout: Duration::from_secs(15),
            ca: None,
            token_file: None,
            token_env: None,
        }
    }
}

impl ClientArgs {
    /// The coordinator URL these options name.
    pub fn url(&self) -> &str {
        self.coordinator.as_deref().unwrap_or(DEFAULT_COORDINATOR)
    }
}

/// The coordinator this CLI process talks to and its request timeout, kept
/// so that every failed call can say where it went (one per process: the CLI
/// talks to one coordinator).
static TARGET: OnceLock<(String, Duration)> = OnceLock::new();

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Control> {
    let url = args.url();
    let _ = TARGET.set((url.to_string(), args.request_timeout));
    let token = BearerToken::from_sources(args.token_file.as_deref(), args.token_env.clone())?;
    let tls = tls::cli_tls(args.ca.as_deref(), url)?;
    let endpoint = tls::endpoint(url, tls.as_ref())
        .map_err(|e| {
            anyhow!("coordinator URL `{url}` is invalid: {e}; expected e.g. http://127.0.0.1:7460")
        })?
        .connect_timeout(args.request_timeout.min(Duration::from_secs(5)))
        .timeout(args.request_timeout)
        .tcp_nodelay(true);
    let channel = tls::connect(endpoint, tls.as_ref()).await.map_err(|e| {
        anyhow!(
            "cannot reach the coordinator at {url}: {} (set --coordinator or GPUFLEET_COORDINATOR)",
            crate::wire::error_chain(&e)
        )
    })?;
    Ok(ControlClient::with_interceptor(channel, token))
}

/// Turns a gRPC status into the one line an operator reads.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let (url, timeout) = TARGET
        .get()
        .map(|(u, t)| (u.as_str(), *t))
        .unwrap_or((DEFAULT_COORDINATOR, Duration::ZERO));
    match s.code() {
        tonic::Code::Unavailable => {
            anyhow!("coordinator at {url} unavailable: {}", s.message())
        }
        // tonic reports its own request timeout as a cancelled call.
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            if s.message().contains("Timeout expired") =>
        {
            anyhow!(
                "the coordinator at {url} did not answer within {} (is it overloaded or stopped? \
                 --request-timeout sets the limit)",
                humantime::format_duration(timeout)
            )
        }
        _ => anyhow!("{}", s.message()),
    }
}
