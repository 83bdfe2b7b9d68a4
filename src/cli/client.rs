//! The CLI's connection to the coordinator's Control API.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::time::Instant;
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
    } else if let Some(status) = e
        .split_once("mapped from http status code ")
        .map(|(_, code)| code.trim())
    {
        // tonic's words for an HTTP answer without gRPC in it: another
        // server, or the coordinator's HTTP port given for its gRPC one.
        format!(
            "it answered HTTP {status} without gRPC: is this the coordinator's gRPC port \
             (7460 by default; 7461 is its HTTP port)?"
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

/// Refuses a URL the operator gave without one of `schemes` (for the
/// coordinator, the scheme says whether TLS is used): `127.0.0.1:7460`, as
/// curl would take it, otherwise fails only when connecting, with "scheme is
/// missing" or "relative URL without a base".
pub fn require_scheme(what: &str, url: &str, schemes: &[&str]) -> anyhow::Result<()> {
    if schemes.iter().any(|s| url.starts_with(&format!("{s}://"))) {
        return Ok(());
    }
    let allowed: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    Err(super::usage(match url.split_once("://") {
        Some((scheme, _)) => format!(
            "the {what} URL `{url}` starts with {scheme}://; allowed: {}",
            allowed.join(" or ")
        ),
        None if schemes.contains(&"https") => format!(
            "the {what} URL `{url}` has no scheme; use http://{url} (https://{url} with TLS)"
        ),
        None => format!("the {what} URL `{url}` has no scheme; use http://{url}"),
    }))
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
    let deadline = Instant::now() + args.request_timeout;
    Ok(connect_until(args, deadline).await?.0)
}

/// `connect`, done by `deadline`: the leading coordinator and its URL.
async fn connect_until(args: &ClientArgs, deadline: Instant) -> anyhow::Result<(Control, String)> {
    let urls: Vec<&str> = args
        .url()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    for url in &urls {
        require_scheme("coordinator", url, &["http", "https"])?;
    }
    let first = urls.first().copied().unwrap_or(DEFAULT_COORDINATOR);
    if urls.len() <= 1 {
        set_target(first, args.request_timeout);
        return Ok((connect_one(args, first, deadline).await?, first.to_string()));
    }
    // Each coordinator's latest answer: one that the deadline cuts off keeps
    // what it said the round before.
    let mut why = vec![String::new(); urls.len()];
    loop {
        for (url, why) in urls.iter().zip(&mut why) {
            if Instant::now() >= deadline {
                break;
            }
            let mut c = match connect_one(args, url, deadline).await {
                Ok(c) => c,
                Err(e) => {
                    *why = format!("{e:#}");
                    continue;
                }
            };
            // A coordinator that does not answer at once (paused) is passed over.
            let probe = PROBE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            let asked = tokio::time::timeout(
                probe,
                c.get_coordinator_status(crate::wire::pb::GetCoordinatorStatusRequest {}),
            )
            .await;
            let status = match asked {
                Err(_) => {
                    *why = format!("{url}: no answer within {probe:?}");
                    continue;
                }
                Ok(Ok(s)) => s.into_inner(),
                // A coordinator from before HA: one coordinator, so it leads.
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                    set_target(url, args.request_timeout);
                    return Ok((c, url.to_string()));
                }
                Ok(Err(s)) => {
                    *why = format!("{url}: {}", s.message());
                    continue;
                }
            };
            match status.role.as_str() {
                "leader" => {
                    set_target(url, args.request_timeout);
                    return Ok((c, url.to_string()));
                }
                "follower" if !status.leader_address.is_empty() => {
                    let leader = status.leader_address;
                    match connect_one(args, &leader, deadline).await {
                        Ok(c) => {
                            set_target(&leader, args.request_timeout);
                            return Ok((c, leader));
                        }
                        Err(e) => *why = format!("the leader {leader}: {e:#}"),
                    }
                }
                _ => *why = format!("{url}: no leader"),
            }
        }
        if Instant::now() >= deadline {
            set_target(first, args.request_timeout);
            let why: Vec<&str> = why
                .iter()
                .map(String::as_str)
                .filter(|w| !w.is_empty())
                .collect();
            anyhow::bail!(
                "no leading coordinator among {} within {}: {}",
                urls.join(", "),
                humantime::format_duration(args.request_timeout),
                why.join("; ")
            );
        }
        pause(deadline).await;
    }
}

/// The wait before asking again during an election, cut short by `deadline`.
async fn pause(deadline: Instant) {
    tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(250))).await;
}

/// Runs one call on the leading coordinator. A coordinator that does not
/// lead refuses a call before running any of it, naming the leader (or no
/// one, during an election): such a call is sent again, to the leader it
/// names or to the one `connect` finds next. This covers a single URL that
/// names a follower, and a leader that stopped leading between `connect`'s
/// probe and the call. Connecting, the calls and the waits between them
/// share one `--request-timeout`. Any other outcome, a failed one included,
/// is the call's own and is returned as it came (a call that failed in
/// flight may have run, so it is never repeated here).
pub async fn on_leader<T, F, Fut>(
    args: &ClientArgs,
    mut call: F,
) -> anyhow::Result<Result<T, tonic::Status>>
where
    F: FnMut(Control) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + args.request_timeout;
    let (mut c, mut at) = connect_until(args, deadline).await?;
    let mut sent_to: Vec<String> = Vec::new();
    loop {
        if !sent_to.contains(&at) {
            sent_to.push(at.clone());
        }
        let Ok(outcome) = tokio::time::timeout_at(deadline, call(c.clone())).await else {
            // Worded as tonic words its own request timeout, so that
            // `status_error` tells the operator the same.
            return Ok(Err(tonic::Status::deadline_exceeded("Timeout expired")));
        };
        let refusal = match &outcome {
            Err(s) => crate::wire::leader_of(s).map(|leader| (leader, s.message().to_string())),
            Ok(_) => None,
        };
        let Some((leader, refused)) = refusal else {
            return Ok(outcome);
        };
        let gave_up = || {
            format!(
                "no leading coordinator took the call within {} (sent to {}): {at} refused it: {refused}",
                humantime::format_duration(args.request_timeout),
                sent_to.join(", ")
            )
        };
        if Instant::now() >= deadline {
            anyhow::bail!(gave_up());
        }
        let next = if leader.is_empty() {
            // An election: ask again shortly, as `connect` does.
            pause(deadline).await;
            connect_until(args, deadline).await
        } else {
            if sent_to.contains(&leader) {
                // Refused there already: its leadership is changing hands.
                pause(deadline).await;
            }
            let c = connect_one(args, &leader, deadline).await;
            c.map(|c| {
                set_target(&leader, args.request_timeout);
                (c, leader)
            })
        };
        (c, at) = next.with_context(gave_up)?;
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

/// A channel to `url`, connected by `deadline`; each request on it may take
/// `--request-timeout`.
async fn connect_one(args: &ClientArgs, url: &str, deadline: Instant) -> anyhow::Result<Control> {
    let token = BearerToken::from_sources(args.token_file.as_deref(), args.token_env.clone())?;
    let tls = tls::cli_tls(args.ca.as_deref(), url)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let endpoint = tls::endpoint(url, tls.as_ref())
        .map_err(|e| {
            anyhow!("coordinator URL `{url}` is invalid: {e}; expected e.g. http://127.0.0.1:7460")
        })?
        .connect_timeout(left.min(Duration::from_secs(5)))
        .timeout(args.request_timeout)
        .tcp_nodelay(true);
    let Ok(connected) =
        tokio::time::timeout_at(deadline, tls::connect(endpoint, tls.as_ref())).await
    else {
        anyhow::bail!(
            "cannot reach the coordinator at {url}: no connection within {} (--request-timeout)",
            humantime::format_duration(args.request_timeout)
        );
    };
    let channel = connected.map_err(|e| {
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
    // A status the coordinator never sent: the transport failed under it, or
    // the answer was plain HTTP (which tonic maps to a code, often
    // Unimplemented, keeping the HTTP status in the message).
    let transport = matches!(
        s.code(),
        tonic::Code::Unknown
            | tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    ) || s.message().starts_with("grpc-status header missing");
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
    use super::*;
    use crate::coordinator::handle::FleetError;
    use crate::wire::pb;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A coordinator of a fleet whose leadership is changing hands: it
    /// refuses every call as a follower does, naming `leader` (none: an
    /// election). To `coordinator status` it says it leads once, the first
    /// time it is asked `leads_after` from its start, or never.
    #[derive(Clone)]
    struct Refuser {
        leader: Option<String>,
        started: Instant,
        leads_after: Option<Duration>,
        has_led: Arc<AtomicBool>,
    }

    type Answer =
        Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

    impl tower_service::Service<http::Request<tonic::body::Body>> for Refuser {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Answer;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Answer {
            if req.uri().path() != "/gpufleet.v1.Control/GetCoordinatorStatus" {
                let refusal = tonic::Status::from(FleetError::NotLeader {
                    leader: self.leader.clone(),
                });
                return Box::pin(async move { Ok(refusal.into_http()) });
            }
            let leads = self
                .leads_after
                .is_some_and(|after| self.started.elapsed() >= after)
                && !self.has_led.swap(true, Ordering::Relaxed);
            let status = pb::CoordinatorStatus {
                role: if leads { "leader" } else { "follower" }.into(),
                leader_address: self.leader.clone().unwrap_or_default(),
                ..Default::default()
            };
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(StatusAnswer(status), req).await)
            })
        }
    }

    impl tonic::server::NamedService for Refuser {
        const NAME: &'static str = "gpufleet.v1.Control";
    }

    struct StatusAnswer(pb::CoordinatorStatus);

    impl tonic::server::UnaryService<pb::GetCoordinatorStatusRequest> for StatusAnswer {
        type Response = pb::CoordinatorStatus;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;
        fn call(&mut self, _: tonic::Request<pb::GetCoordinatorStatusRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(self.0.clone())))
        }
    }

    /// A loopback port for a coordinator, and its URL.
    async fn listen() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (listener, url)
    }

    fn serve(listener: tokio::net::TcpListener, refuser: Refuser) {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(refuser)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }

    fn refuser(leader: Option<&str>, leads_after: Option<Duration>) -> Refuser {
        Refuser {
            leader: leader.map(str::to_string),
            started: Instant::now(),
            leads_after,
            has_led: Arc::default(),
        }
    }

    fn args(urls: &[&str], timeout: Duration) -> ClientArgs {
        ClientArgs {
            request_timeout: timeout,
            ..ClientArgs::plain(urls.join(","))
        }
    }

    /// `model ls`'s call, which must fail within 1.5 × `--request-timeout`
    /// (one timeout and room for a loaded machine; two would be a second
    /// wait): its error.
    async fn given_up(args: &ClientArgs) -> String {
        let asked = Instant::now();
        let answer = ask(args, pb::ListModelsRequest {}, |mut c, r| async move {
            c.list_models(r).await
        })
        .await;
        let (took, timeout) = (asked.elapsed(), args.request_timeout);
        let err = format!("{:#}", answer.expect_err("no coordinator leads"));
        assert!(
            took < timeout * 3 / 2,
            "took {took:?} with --request-timeout {timeout:?}: {err}"
        );
        err
    }

    #[tokio::test]
    async fn a_call_that_finds_no_leader_gives_up_after_one_request_timeout() {
        // The first coordinator leads only once, late, and refuses the call
        // anyway (it lost the lease meanwhile): the election goes on past
        // the timeout. Finding that leader took most of the timeout, and the
        // search after the refusal has only what is left of it.
        let timeout = Duration::from_secs(4);
        let (late_port, late) = listen().await;
        let (never_port, never) = listen().await;
        serve(late_port, refuser(None, Some(timeout * 3 / 4)));
        serve(never_port, refuser(None, None));
        let err = given_up(&args(&[&late, &never], timeout)).await;
        assert!(err.contains(&format!("sent to {late}")), "{err}");
        assert!(err.contains("no leader now"), "{err}");
        assert!(err.contains(&format!("among {late}, {never}")), "{err}");
    }

    #[tokio::test]
    async fn followers_that_name_each_other_are_left_at_the_timeout_naming_both() {
        let timeout = Duration::from_secs(2);
        let (a_port, a) = listen().await;
        let (b_port, b) = listen().await;
        serve(a_port, refuser(Some(&b), None));
        serve(b_port, refuser(Some(&a), None));
        let err = given_up(&args(&[&a], timeout)).await;
        assert!(err.contains(&format!("sent to {a}, {b}")), "{err}");
        assert!(err.contains("the leader is http://"), "{err}");
    }

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
        assert!(h(
            "http://c:7461",
            "grpc-status header missing, mapped from HTTP status code 404"
        )
        .contains("HTTP 404 without gRPC: is this the coordinator's gRPC port"));
        assert_eq!(transport_hint("http://c:7460", "model `x` not found"), None);
    }

    #[test]
    fn a_url_without_its_scheme_is_refused_naming_the_fix() {
        let tls = ["http", "https"];
        assert!(require_scheme("coordinator", "http://c:7460", &tls).is_ok());
        assert!(require_scheme("coordinator", "https://c:7460", &tls).is_ok());
        let e = require_scheme("gateway", "127.0.0.1:7470", &["http"]).unwrap_err();
        assert!(e.is::<crate::cli::UsageError>());
        assert_eq!(
            e.to_string(),
            "the gateway URL `127.0.0.1:7470` has no scheme; use http://127.0.0.1:7470"
        );
        let e = require_scheme("coordinator", "c:7460", &tls).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("use http://c:7460 (https://c:7460 with TLS)"),
            "{e}"
        );
        let e = require_scheme("coordinator", "grpc://c:7460", &tls).unwrap_err();
        assert!(
            e.to_string().ends_with("allowed: http:// or https://"),
            "{e}"
        );
    }
}
