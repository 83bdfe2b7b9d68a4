//! The CLI's connection to the coordinator's Control API.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
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
    /// Coordinator gRPC URL (`https://` means TLS), or several comma-separated
    /// (coordinators sharing etcd: the CLI finds the leader) [default:
    /// http://127.0.0.1:7460; for the agent: its config file].
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

/// What a transport error most likely means, in the operator's terms.
pub fn transport_hint(url: &str, error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    let plain = url.starts_with("http://");
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    let hint = if has(&["connection refused"]) {
        "nothing listens there: is the coordinator running, and is this its gRPC port (7460 by default)?".to_string()
    } else if plain
        && has(&[
            "h2 protocol error",
            "http2 error",
            "frame with invalid size",
            "connection reset",
            "broken pipe",
            "operation was canceled",
        ])
    {
        format!(
            "the port did not answer in plain HTTP/2; if it speaks TLS, use {} (and GPUFLEET_CA)",
            url.replacen("http://", "https://", 1)
        )
    } else if !plain
        && has(&[
            "invalidcontenttype",
            "corrupt message",
            "tls handshake eof",
            "wrong version number",
            "invalid message",
        ])
    {
        format!(
            "this port does not speak TLS: use {}",
            url.replacen("https://", "http://", 1)
        )
    } else if has(&["metadata size", "header list size", "headers too large"]) {
        "the answer was too large to read (a very long value sent back in it)".to_string()
    } else if has(&["timed out", "deadline"]) {
        "no answer in time: the coordinator is overloaded, or a firewall drops the packets"
            .to_string()
    } else if has(&["dns error", "failed to lookup", "name or service not known"]) {
        "the host name does not resolve".to_string()
    } else {
        return None;
    };
    Some(hint)
}

impl ClientArgs {
    /// The coordinator URL these options name.
    pub fn url(&self) -> &str {
        self.coordinator.as_deref().unwrap_or(DEFAULT_COORDINATOR)
    }
}

/// Largest answer the CLI takes: `gpu ls` of a 10,000-node fleet (80,000
/// GPUs) is about 20 MiB, past tonic's default of 4 MiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// The coordinator this CLI process talks to and its request timeout, kept
/// so that every failed call can say where it went (the last one connected:
/// a call refused by a coordinator that stopped leading goes on to the next).
static TARGET: Mutex<Option<(String, Duration)>> = Mutex::new(None);

fn set_target(url: &str, timeout: Duration) {
    if let Ok(mut t) = TARGET.lock() {
        *t = Some((url.to_string(), timeout));
    }
}

/// How long each coordinator of a list has to say who leads.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the coordinator that leads: with one URL, that one; with
/// several (comma-separated), the one they name as leader, waiting up to
/// `--request-timeout` (15 s by default) while an election runs: after a
/// `kill -9` that is the lease (5 s by default) and the new leader's load of
/// the state.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Control> {
    let urls: Vec<&str> = args
        .url()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let first = urls.first().copied().unwrap_or(DEFAULT_COORDINATOR);
    if urls.len() <= 1 {
        set_target(first, args.request_timeout);
        return connect_one(args, first).await;
    }
    let wait = args.request_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    let mut why = Vec::new();
    loop {
        why.clear();
        for url in &urls {
            let mut c = match connect_one(args, url).await {
                Ok(c) => c,
                Err(e) => {
                    why.push(format!("{e:#}"));
                    continue;
                }
            };
            // A coordinator that does not answer at once (paused) is passed over.
            let asked = tokio::time::timeout(
                PROBE_TIMEOUT,
                c.get_coordinator_status(crate::wire::pb::GetCoordinatorStatusRequest {}),
            )
            .await;
            let status = match asked {
                Err(_) => {
                    why.push(format!("{url}: no answer within {PROBE_TIMEOUT:?}"));
                    continue;
                }
                Ok(Ok(s)) => s.into_inner(),
                // A coordinator from before HA: one coordinator, so it leads.
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    set_target(url, args.request_timeout);
                    return Ok(c);
                }
                Ok(Err(s)) => {
                    why.push(format!("{url}: {}", s.message()));
                    continue;
                }
            };
            match status.role.as_str() {
                "leader" => {
                    set_target(url, args.request_timeout);
                    return Ok(c);
                }
                "follower" if !status.leader_address.is_empty() => {
                    let leader = status.leader_address;
                    match connect_one(args, &leader).await {
                        Ok(c) => {
                            set_target(&leader, args.request_timeout);
                            return Ok(c);
                        }
                        Err(e) => why.push(format!("the leader {leader}: {e:#}")),
                    }
                }
                _ => why.push(format!("{url}: no leader")),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            set_target(first, args.request_timeout);
            anyhow::bail!(
                "no leading coordinator among {} within {}: {}",
                urls.join(", "),
                humantime::format_duration(wait),
                why.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs one call on the leading coordinator. A coordinator that does not
/// lead refuses a call before running any of it, naming the leader (or no
/// one, during an election): such a call is sent again, to the leader it
/// names or to the one `connect` finds next, until `--request-timeout`. This
/// covers a single URL that names a follower, and a leader that stopped
/// leading between `connect`'s probe and the call. Any other outcome, a
/// failed one included, is the call's own and is returned as it came (a call
/// that failed in flight may have run, so it is never repeated here).
pub async fn on_leader<T, F, Fut>(
    args: &ClientArgs,
    mut call: F,
) -> anyhow::Result<Result<T, tonic::Status>>
where
    F: FnMut(Control) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + args.request_timeout;
    let mut c = connect(args).await?;
    loop {
        let outcome = call(c.clone()).await;
        let leader = match &outcome {
            Err(s) => crate::wire::leader_of(s),
            Ok(_) => None,
        };
        let Some(leader) = leader else {
            return Ok(outcome);
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(outcome);
        }
        c = if leader.is_empty() {
            // An election: ask again shortly, as `connect` does.
            tokio::time::sleep(Duration::from_millis(250)).await;
            connect(args).await?
        } else {
            let c = connect_one(args, &leader).await?;
            set_target(&leader, args.request_timeout);
            c
        };
    }
}

/// `on_leader` for the usual call: `request` sent (again, if refused by a
/// coordinator that does not lead), its answer's message, or the refusal in
/// the operator's words.
pub async fn ask<Req, T, F, Fut>(args: &ClientArgs, request: Req, mut call: F) -> anyhow::Result<T>
where
    Req: Clone,
    F: FnMut(Control, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    on_leader(args, |c| call(c, request.clone()))
        .await?
        .map(tonic::Response::into_inner)
        .map_err(status_error)
}

async fn connect_one(args: &ClientArgs, url: &str) -> anyhow::Result<Control> {
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
        let chain = crate::wire::error_chain(&e);
        match transport_hint(url, &chain) {
            Some(hint) => anyhow!("cannot reach the coordinator at {url}: {hint} ({chain})"),
            None => anyhow!(
                "cannot reach the coordinator at {url}: {chain} (set --coordinator or GPUFLEET_COORDINATOR)"
            ),
        }
    })?;
    Ok(ControlClient::with_interceptor(channel, token).max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// Turns a gRPC status into the one line an operator reads.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let target = TARGET.lock().ok().and_then(|t| t.clone());
    let (url, timeout) = target
        .as_ref()
        .map(|(u, t)| (u.as_str(), *t))
        .unwrap_or((DEFAULT_COORDINATOR, Duration::ZERO));
    // A status the coordinator never sent: the transport failed under it.
    let transport = matches!(
        s.code(),
        tonic::Code::Unknown
            | tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    );
    let chain = match std::error::Error::source(&s) {
        Some(e) => format!("{}: {}", s.message(), crate::wire::error_chain(e)),
        None => s.message().to_string(),
    };
    if transport {
        if let Some(hint) = transport_hint(url, &chain) {
            return anyhow!(
                "the coordinator at {url} failed the call: {hint} ({})",
                crate::api::capped(chain, 300)
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::transport_hint;

    #[test]
    fn transport_errors_become_sentences_with_a_likely_cause() {
        let h = |url, e| transport_hint(url, e).unwrap_or_default();
        assert!(h("http://c:7460", "h2 protocol error: http2 error").contains("use https://c:7460"));
        assert!(h(
            "https://c:7460",
            "transport error: received corrupt message of type InvalidContentType"
        )
        .contains("does not speak TLS: use http://c:7460"));
        assert!(h(
            "http://c:7460",
            "tcp connect error: Connection refused (os error 111)"
        )
        .contains("nothing listens there"));
        assert!(
            h("http://c:7460", "received metadata size exceeds hard limit").contains("too large")
        );
        assert_eq!(transport_hint("http://c:7460", "model `x` not found"), None);
    }
}
