//! The gateway's settings: `/etc/gpufleet/gateway.toml` merged with the
//! flags of `gpufleet gateway`, flags winning, every value checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::agent::{check_urls, OneOrMany};
use super::problem::{duration_in, int_in, optional_path, size, socket_addr, Problem};
use super::{read_config, ConfigError, RawTls, TlsSettings};

pub const DEFAULT_GATEWAY_CONFIG: &str = "/etc/gpufleet/gateway.toml";

/// Flags of `gpufleet gateway`; each one set beats the file.
#[derive(Debug, Default, Clone)]
pub struct GatewayOverrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub coordinator: Option<String>,
}

/// How the gateway chooses among replicas with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Least outstanding of two random replicas.
    LeastOutstanding,
    /// Each replica with room in turn, blind to load and prompt: the
    /// baseline the other two are measured against.
    RoundRobin,
    /// Longest cached prefix within `imbalance` requests of the least busy;
    /// else bounded-load consistent hashing of the first block.
    Prefix { imbalance: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Clients' OpenAI-compatible HTTP, /metrics, /healthz, /status.
    pub listen: SocketAddr,
    /// gRPC URL of the coordinator (`https://` means TLS); several sharing
    /// etcd comma-separated (the link follows the leader).
    pub coordinator: String,
    /// How this gateway names itself to the coordinator [default: hostname:port].
    pub name: Option<String>,
    /// Longest a request waits for a replica with room before a 503.
    pub hold_timeout: Duration,
    /// Requests held per model before new ones get 429.
    pub queue_capacity: u32,
    /// Requests a replica takes at once when its spec sets no
    /// `server.max_concurrency`.
    pub default_max_concurrency: u32,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: u64,
    /// How long a client may take to send its request head and body (408 beyond).
    pub request_read_timeout: Duration,
    /// How often demand goes to the coordinator.
    pub report_interval: Duration,
    /// Client connections to a replica that fail before a response byte
    /// are tried on another replica, up to this many tries in all.
    pub max_attempts: u32,
    /// How a replica is chosen among those with room.
    pub routing: Routing,
    pub tls: TlsSettings,
    /// Lines "<access> <token>": clients must present one of these tokens
    /// (any access) as `Authorization: Bearer`. `None`: clients need none.
    pub client_tokens_file: Option<PathBuf>,
    /// The token the gateway presents to the coordinator when its Control
    /// API requires one.
    pub coordinator_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<String>,
    coordinator: Option<OneOrMany>,
    name: Option<String>,
    hold_timeout: Option<String>,
    queue_capacity: Option<i64>,
    default_max_concurrency: Option<i64>,
    max_body: Option<String>,
    request_read_timeout: Option<String>,
    report_interval: Option<String>,
    max_attempts: Option<i64>,
    routing: Option<String>,
    prefix_imbalance: Option<i64>,
    tls: Option<RawTls>,
    auth: Option<RawGatewayAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewayAuth {
    client_tokens_file: Option<String>,
    coordinator_token_file: Option<String>,
}

impl GatewayConfig {
    /// Reads the `--config` file (which must exist) or the default file (when
    /// present) and applies the flags.
    pub fn load(o: &GatewayOverrides) -> Result<GatewayConfig, ConfigError> {
        let (src, origin) = read_config(o.config.as_deref(), Path::new(DEFAULT_GATEWAY_CONFIG))?;
        from_toml_at(&src, o, origin)
    }

    /// Builds the settings from TOML text and the flags; errors say "gateway config".
    pub fn from_toml(src: &str, o: &GatewayOverrides) -> Result<GatewayConfig, ConfigError> {
        from_toml_at(src, o, "gateway config".to_string())
    }
}

fn from_toml_at(
    src: &str,
    o: &GatewayOverrides,
    origin: String,
) -> Result<GatewayConfig, ConfigError> {
    let invalid = |problem: Problem| ConfigError::Invalid {
        origin: origin.clone(),
        problem: problem.locate(src),
    };
    let raw: RawGateway = toml::from_str(src)
        .map_err(|e| invalid(Problem::from_toml(src, &e, "the gateway config")))?;
    validate(raw, o).map_err(invalid)
}

fn validate(raw: RawGateway, o: &GatewayOverrides) -> Result<GatewayConfig, Problem> {
    let listen = match (o.listen, raw.listen) {
        (Some(flag), _) => flag,
        (None, Some(file)) => socket_addr("listen", &file)?,
        (None, None) => SocketAddr::from(([0, 0, 0, 0], 7470)),
    };
    // Several coordinators sharing etcd are kept comma-separated, as
    // GPUFLEET_COORDINATOR takes them; the link finds the leader.
    let coordinator = match (&o.coordinator, raw.coordinator) {
        (Some(flag), _) => check_urls("--coordinator", flag.split(',').map(str::to_string))?,
        (None, Some(file)) => check_urls("coordinator", file.into_list())?,
        (None, None) => vec!["http://127.0.0.1:7460".to_string()],
    }
    .join(",");
    let name = raw.name.filter(|n| !n.trim().is_empty());
    if let Some(n) = &name {
        if n.len() > 253 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Problem::invalid(
                "name",
                format!("name `{n}` is invalid; allowed: up to 253 characters, no spaces or control characters"),
            ));
        }
    }
    let hold_timeout = duration_in(
        "hold_timeout",
        raw.hold_timeout.as_deref().unwrap_or("60s"),
        Duration::from_millis(100)..=Duration::from_secs(3600),
    )?;
    let queue_capacity = int_in(
        "queue_capacity",
        raw.queue_capacity.unwrap_or(256),
        0..=1_000_000u32,
    )?;
    let default_max_concurrency = int_in(
        "default_max_concurrency",
        raw.default_max_concurrency.unwrap_or(8),
        1..=100_000u32,
    )?;
    let max_body = raw.max_body.as_deref().unwrap_or("4MiB");
    let max_body_bytes = size("max_body", max_body)?;
    if !(1024..=1 << 30).contains(&max_body_bytes) {
        return Err(Problem::invalid(
            "max_body",
            format!("max_body = \"{max_body}\" is out of range; allowed: 1KiB..=1GiB"),
        ));
    }
    let request_read_timeout = duration_in(
        "request_read_timeout",
        raw.request_read_timeout.as_deref().unwrap_or("30s"),
        Duration::from_millis(100)..=Duration::from_secs(600),
    )?;
    let report_interval = duration_in(
        "report_interval",
        raw.report_interval.as_deref().unwrap_or("300ms"),
        Duration::from_millis(50)..=Duration::from_secs(10),
    )?;
    let max_attempts = int_in("max_attempts", raw.max_attempts.unwrap_or(3), 1..=10u32)?;
    let prefix_imbalance = int_in(
        "prefix_imbalance",
        raw.prefix_imbalance.unwrap_or(4),
        0..=10_000u32,
    )?;
    let routing = match raw.routing.as_deref().unwrap_or("least-outstanding") {
        "least-outstanding" => Routing::LeastOutstanding,
        "round-robin" => Routing::RoundRobin,
        "prefix" => Routing::Prefix {
            imbalance: prefix_imbalance,
        },
        other => {
            return Err(Problem::invalid(
                "routing",
                format!(
                "routing = \"{other}\" is unknown; allowed: least-outstanding, round-robin, prefix"
            ),
            ))
        }
    };
    let tls = raw.tls.unwrap_or_default().validate_client()?;
    match (tls.ca.is_some(), coordinator.starts_with("https://")) {
        (true, false) => {
            return Err(Problem::invalid(
                "tls.ca",
                format!("[tls] is set but the coordinator URL {coordinator} is not https://; use https:// or empty [tls]"),
            ))
        }
        (false, true) => {
            return Err(Problem::invalid(
                "tls.ca",
                format!("the coordinator URL {coordinator} is https:// but tls.ca is not set; set it to the fleet's ca.pem"),
            ))
        }
        _ => {}
    }
    let auth = raw.auth.unwrap_or_default();
    Ok(GatewayConfig {
        listen,
        coordinator,
        name,
        hold_timeout,
        queue_capacity,
        default_max_concurrency,
        max_body_bytes,
        request_read_timeout,
        report_interval,
        max_attempts,
        routing,
        tls,
        client_tokens_file: optional_path(auth.client_tokens_file),
        coordinator_token_file: optional_path(auth.coordinator_token_file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PACKAGED: &str = include_str!("../../packaging/config/gateway.toml");

    fn load(src: &str) -> GatewayConfig {
        GatewayConfig::from_toml(src, &GatewayOverrides::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(src: &str) -> String {
        match GatewayConfig::from_toml(src, &GatewayOverrides::default()) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_and_the_packaged_file_agree() {
        let c = load("");
        assert_eq!(c.listen, "0.0.0.0:7470".parse().unwrap());
        assert_eq!(c.coordinator, "http://127.0.0.1:7460");
        assert_eq!(c.hold_timeout, Duration::from_secs(60));
        assert_eq!(c.queue_capacity, 256);
        assert_eq!(c.default_max_concurrency, 8);
        assert_eq!(c.max_body_bytes, 4 << 20);
        assert_eq!(c.report_interval, Duration::from_millis(300));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.routing, Routing::LeastOutstanding);
        assert!(!c.tls.enabled());
        assert_eq!(c.client_tokens_file, None);
        assert_eq!(load(PACKAGED), c);
    }

    #[test]
    fn flags_beat_the_file() {
        let src = "listen = \"127.0.0.1:1\"\ncoordinator = \"http://c:1\"\n";
        let o = GatewayOverrides {
            config: None,
            listen: Some("127.0.0.1:2".parse().unwrap()),
            coordinator: Some("http://d:2/".into()),
        };
        let c = GatewayConfig::from_toml(src, &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.coordinator, "http://d:2");
        let c = load(src);
        assert_eq!((c.listen.port(), c.coordinator.as_str()), (1, "http://c:1"));
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        assert!(err("hold_timeout = \"2h\"\n")
            .ends_with("line 1: hold_timeout = \"2h\" is out of range; allowed: 100ms..=1h"));
        assert!(err("max_body = \"10B\"\n").contains("allowed: 1KiB..=1GiB"));
        assert!(err("default_max_concurrency = 0\n").contains("allowed: 1..=100000"));
        assert!(
            err("coordinator = \"coord:7460\"\n").contains("must be a URL starting with http://")
        );
        assert!(err("holdtimeout = \"1s\"\n").contains(
            "unknown key `holdtimeout` in the gateway config; allowed keys: listen, coordinator"
        ));
        assert!(err("[tls]\ncert = \"/c.pem\"\n").contains("tls.ca and tls.key must be set too"));
        assert!(err("[tls]\nca = \"/ca.pem\"\n").contains("is not https://"));
        assert!(err("coordinator = \"https://c:1\"\n").contains("tls.ca is not set"));
        let ca_alone = load("coordinator = \"https://c:1\"\n[tls]\nca = \"/ca.pem\"\n");
        assert_eq!(ca_alone.tls.ca, Some(PathBuf::from("/ca.pem")));
        assert!(err("routing = \"random\"\n")
            .contains("allowed: least-outstanding, round-robin, prefix"));
        assert_eq!(
            load("routing = \"prefix\"\nprefix_imbalance = 2\n").routing,
            Routing::Prefix { imbalance: 2 }
        );
        assert_eq!(
            load("routing = \"round-robin\"\n").routing,
            Routing::RoundRobin
        );
        assert!(err("[auth]\ntokens = \"/x\"\n")
            .contains("allowed keys: client_tokens_file, coordinator_token_file"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(src in "\\PC*") {
            let _ = GatewayConfig::from_toml(&src, &GatewayOverrides::default());
        }
    }
}
