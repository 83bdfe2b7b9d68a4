//! The coordinator's settings: `/etc/gpufleet/coordinator.toml` merged with
//! the flags of `gpufleet coordinator`, flags winning, every value checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::problem::{duration_in, int_in, optional_path, socket_addr, Problem};
use super::units::format_duration;
use super::{read_config, ConfigError, RawTls, TlsSettings};

pub const DEFAULT_COORDINATOR_CONFIG: &str = "/etc/gpufleet/coordinator.toml";

/// Flags of `gpufleet coordinator`; each one set beats the file.
#[derive(Debug, Default, Clone)]
pub struct CoordinatorOverrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// gRPC: agent sessions and the Control API.
    pub listen: SocketAddr,
    /// HTTP: /metrics, /healthz, /v1/endpoints, wake.
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Control loop period.
    pub tick: Duration,
    pub node_suspect_after: Duration,
    pub node_lost_after: Duration,
    /// After a restart, no stop or move decisions before this.
    pub reconnect_grace: Duration,
    /// How long a replica being scaled down keeps running after it is marked
    /// retiring in /v1/endpoints: longer than the endpoint readers' refresh
    /// (Prometheus' http_sd refreshes every 60s), so none of them meets a
    /// stopped server.
    pub retire_grace: Duration,
    pub event_log_capacity: usize,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    /// Code-loading variables (LD_PRELOAD, ...) `model apply` lets through:
    /// names, or prefixes ending in `*`. Each agent checks its own too.
    pub allowed_env: Vec<String>,
    /// Adopt reported replicas that carry no assignment token (agents and
    /// records from before tokens): for the first start after that upgrade.
    pub adopt_unsigned_replicas: bool,
    /// Snapshots of the store kept in `DATA_DIR/snapshots`, one per start.
    pub store_snapshots: usize,
    pub http: HttpSettings,
    /// Limits on the connections of both listeners.
    pub limits: ConnectionLimits,
    /// Where desired state lives: redb in the data dir, or etcd.
    pub store: StoreBackend,
}

/// `[store] backend`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StoreBackend {
    /// One coordinator, a file in the data dir.
    #[default]
    Redb,
    /// Several coordinators, one leader at a time, state in etcd.
    Etcd(Box<EtcdStoreSettings>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdStoreSettings {
    pub etcd: crate::etcd::EtcdSettings,
    /// Every key of this fleet starts with it; fleets with different
    /// prefixes share an etcd without meeting.
    pub prefix: String,
    /// This coordinator's name among the members.
    pub name: String,
    /// Its gRPC URL as agents and the CLI reach it.
    pub advertise: String,
    /// Its HTTP URL.
    pub advertise_http: String,
    /// The leader's lease.
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `/v1/endpoints` without a token even when tokens are configured (for
    /// a Prometheus that discovers replicas through it).
    pub anonymous_endpoints: bool,
}

/// What one client may hold of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections per listener; past it, the oldest connection that
    /// has not sent a request yet is closed for the new one.
    pub max_connections: usize,
    /// Open connections from one IP address per listener.
    pub max_connections_per_peer: usize,
    /// A connection must send its first request within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Agent sessions open at once (gRPC listener): one per agent, so the
    /// fleet's size with room to spare; past it, new sessions are refused.
    pub max_agent_sessions: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 8192,
            max_connections_per_peer: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_agent_sessions: 16384,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// Lines "admin <token>" / "read <token>"; `None`: no tokens required.
    pub tokens_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    listen: Option<String>,
    http_listen: Option<String>,
    data_dir: Option<String>,
    tick: Option<String>,
    node_suspect_after: Option<String>,
    node_lost_after: Option<String>,
    reconnect_grace: Option<String>,
    retire_grace: Option<String>,
    event_log_capacity: Option<i64>,
    allowed_env: Option<Vec<String>>,
    adopt_unsigned_replicas: Option<bool>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
    store_snapshots: Option<i64>,
    http: Option<RawHttp>,
    limits: Option<RawLimits>,
    store: Option<RawStore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    name: Option<String>,
    advertise: Option<String>,
    advertise_http: Option<String>,
    lease_ttl: Option<String>,
    tls: Option<RawStoreTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    anonymous_endpoints: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_connections: Option<i64>,
    max_connections_per_peer: Option<i64>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_agent_sessions: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    tokens_file: Option<String>,
}

impl CoordinatorConfig {
    /// Reads the `--config` file (which must exist) or the default file (when
    /// present) and applies the flags.
    pub fn load(o: &CoordinatorOverrides) -> Result<CoordinatorConfig, ConfigError> {
        let (src, origin) =
            read_config(o.config.as_deref(), Path::new(DEFAULT_COORDINATOR_CONFIG))?;
        from_toml_at(&src, o, origin)
    }

    /// Builds the settings from TOML text and the flags; errors say "coordinator config".
    pub fn from_toml(
        src: &str,
        o: &CoordinatorOverrides,
    ) -> Result<CoordinatorConfig, ConfigError> {
        from_toml_at(src, o, "coordinator config".to_string())
    }
}

fn from_toml_at(
    src: &str,
    o: &CoordinatorOverrides,
    origin: String,
) -> Result<CoordinatorConfig, ConfigError> {
    let invalid = |problem: Problem| ConfigError::Invalid {
        origin: origin.clone(),
        problem: problem.locate(src),
    };
    let raw: RawCoordinator = toml::from_str(src)
        .map_err(|e| invalid(Problem::from_toml(src, &e, "the coordinator config")))?;
    validate(raw, o).map_err(invalid)
}

fn validate(raw: RawCoordinator, o: &CoordinatorOverrides) -> Result<CoordinatorConfig, Problem> {
    let listen = match (o.listen, raw.listen) {
        (Some(flag), _) => flag,
        (None, Some(file)) => socket_addr("listen", &file)?,
        (None, None) => SocketAddr::from(([0, 0, 0, 0], 7460)),
    };
    let http_listen = match (o.http_listen, raw.http_listen) {
        (Some(flag), _) => flag,
        (None, Some(file)) => socket_addr("http_listen", &file)?,
        (None, None) => SocketAddr::from(([0, 0, 0, 0], 7461)),
    };
    if listen == http_listen {
        return Err(Problem::invalid(
            "http_listen",
            format!(
                "http_listen and listen are both {listen}; the gRPC and HTTP ports must differ"
            ),
        ));
    }
    let data_dir = match (&o.data_dir, raw.data_dir) {
        (Some(flag), _) => flag.clone(),
        (None, Some(file)) if file.trim().is_empty() => {
            return Err(Problem::invalid(
                "data_dir",
                "data_dir must not be empty; default: \"/var/lib/gpufleet/coordinator\"",
            ))
        }
        (None, Some(file)) => PathBuf::from(file),
        (None, None) => PathBuf::from("/var/lib/gpufleet/coordinator"),
    };

    let tick = duration_in(
        "tick",
        raw.tick.as_deref().unwrap_or("1s"),
        Duration::from_millis(50)..=Duration::from_secs(60),
    )?;
    let node_suspect_after = duration_in(
        "node_suspect_after",
        raw.node_suspect_after.as_deref().unwrap_or("10s"),
        Duration::from_millis(100)..=Duration::from_secs(3600),
    )?;
    let node_lost_after = duration_in(
        "node_lost_after",
        raw.node_lost_after.as_deref().unwrap_or("30s"),
        Duration::from_millis(100)..=Duration::from_secs(24 * 3600),
    )?;
    if node_lost_after <= node_suspect_after {
        return Err(Problem::invalid(
            "node_lost_after",
            format!(
                "node_lost_after ({}) must be longer than node_suspect_after ({})",
                format_duration(node_lost_after),
                format_duration(node_suspect_after)
            ),
        ));
    }
    let reconnect_grace = duration_in(
        "reconnect_grace",
        raw.reconnect_grace.as_deref().unwrap_or("30s"),
        Duration::ZERO..=Duration::from_secs(3600),
    )?;
    let retire_grace = duration_in(
        "retire_grace",
        raw.retire_grace.as_deref().unwrap_or("75s"),
        Duration::ZERO..=Duration::from_secs(3600),
    )?;
    let event_log_capacity = int_in(
        "event_log_capacity",
        raw.event_log_capacity.unwrap_or(10_000),
        100..=1_000_000u32,
    )? as usize;
    let tls = raw.tls.unwrap_or_default().validate()?;
    let auth = AuthSettings {
        tokens_file: optional_path(raw.auth.unwrap_or_default().tokens_file),
    };
    let store_snapshots = int_in(
        "store_snapshots",
        raw.store_snapshots.unwrap_or(5),
        0..=1000u32,
    )? as usize;
    let http = HttpSettings {
        anonymous_endpoints: raw.http.unwrap_or_default().anonymous_endpoints == Some(true),
    };
    let limits = check_limits(raw.limits)?;

    let store = store_backend(raw.store, listen, http_listen, tls.enabled())?;

    Ok(CoordinatorConfig {
        listen,
        http_listen,
        data_dir,
        tick,
        node_suspect_after,
        node_lost_after,
        reconnect_grace,
        retire_grace,
        event_log_capacity,
        tls,
        auth,
        allowed_env: super::agent::check_allowed_env(raw.allowed_env)?,
        adopt_unsigned_replicas: raw.adopt_unsigned_replicas.unwrap_or(false),
        store_snapshots,
        http,
        limits,
        store,
    })
}

/// The `[limits]` section of an agent config: the coordinator's, less what
/// only a coordinator has (agent sessions).
pub(super) fn check_agent_limits(raw: Option<RawLimits>) -> Result<ConnectionLimits, Problem> {
    if raw.as_ref().is_some_and(|l| l.max_agent_sessions.is_some()) {
        return Err(Problem::invalid(
            "limits.max_agent_sessions",
            "limits.max_agent_sessions is a coordinator setting; an agent's [limits] takes max_connections, max_connections_per_peer, header_read_timeout and idle_timeout",
        ));
    }
    check_limits(raw)
}

/// The `[limits]` section of a coordinator config, checked.
pub(super) fn check_limits(raw: Option<RawLimits>) -> Result<ConnectionLimits, Problem> {
    let l = raw.unwrap_or_default();
    let d = ConnectionLimits::default();
    let max_connections = int_in(
        "limits.max_connections",
        l.max_connections.unwrap_or(d.max_connections as i64),
        16..=1_000_000u32,
    )? as usize;
    let max_connections_per_peer = int_in(
        "limits.max_connections_per_peer",
        // Unset, it follows a lowered max_connections rather than refuse it.
        l.max_connections_per_peer
            .unwrap_or(d.max_connections_per_peer.min(max_connections) as i64),
        1..=1_000_000u32,
    )? as usize;
    if max_connections_per_peer > max_connections {
        return Err(Problem::invalid(
            "limits.max_connections_per_peer",
            format!("limits.max_connections_per_peer ({max_connections_per_peer}) must not exceed limits.max_connections ({max_connections})"),
        ));
    }
    Ok(ConnectionLimits {
        max_connections,
        max_connections_per_peer,
        header_read_timeout: duration_in(
            "limits.header_read_timeout",
            l.header_read_timeout.as_deref().unwrap_or("10s"),
            Duration::from_millis(100)..=Duration::from_secs(600),
        )?,
        idle_timeout: duration_in(
            "limits.idle_timeout",
            l.idle_timeout.as_deref().unwrap_or("2m"),
            Duration::from_millis(100)..=Duration::from_secs(24 * 3600),
        )?,
        max_agent_sessions: int_in(
            "limits.max_agent_sessions",
            l.max_agent_sessions.unwrap_or(d.max_agent_sessions as i64),
            1..=1_000_000u32,
        )? as usize,
    })
}

/// The default URL of a listener: its address, or this host's name when it
/// listens on every address.
fn advertised(addr: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    let host = if addr.ip().is_unspecified() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

fn store_backend(
    raw: Option<RawStore>,
    listen: SocketAddr,
    http_listen: SocketAddr,
    https: bool,
) -> Result<StoreBackend, Problem> {
    let raw = raw.unwrap_or_default();
    match raw.backend.as_deref().unwrap_or("redb") {
        "redb" => {
            if raw.endpoints.is_some() {
                return Err(Problem::invalid(
                    "store.endpoints",
                    "store.endpoints is set but store.backend is \"redb\"; set backend = \"etcd\" to use etcd",
                ));
            }
            return Ok(StoreBackend::Redb);
        }
        "etcd" => {}
        other => {
            return Err(Problem::invalid(
                "store.backend",
                format!("store.backend = {other:?} is unknown; allowed: \"redb\" (one coordinator) or \"etcd\""),
            ))
        }
    }
    let endpoints = raw.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(Problem::invalid(
            "store.endpoints",
            "store.backend = \"etcd\" needs store.endpoints, e.g. [\"http://10.0.0.1:2379\"]",
        ));
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://"))
            || e.parse::<http::Uri>().is_err()
        {
            return Err(Problem::invalid(
                "store.endpoints",
                format!(
                    "store.endpoints: {e:?} is not an http:// or https:// URL of an etcd member"
                ),
            ));
        }
    }
    let prefix = raw.prefix.unwrap_or_else(|| "/gpufleet/v1".into());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(Problem::invalid(
            "store.prefix",
            format!("store.prefix = {prefix:?}: it must start with / and not end with one, e.g. \"/gpufleet/v1\""),
        ));
    }
    let name = match raw.name {
        Some(n) if crate::config::agent::is_valid_node_name(&n) => n,
        Some(n) => {
            return Err(Problem::invalid(
                "store.name",
                format!(
                    "store.name = {n:?}: allowed: {}",
                    crate::config::agent::NODE_NAME_RULE
                ),
            ))
        }
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "coordinator".into()),
    };
    let lease_ttl = duration_in(
        "store.lease_ttl",
        raw.lease_ttl.as_deref().unwrap_or("5s"),
        Duration::from_secs(2)..=Duration::from_secs(60),
    )?;
    // etcd grants leases in whole seconds: a fraction would be cut off
    // there, and the step-down deadline, reckoned from this value, would
    // come later than the lease's real end allows.
    if lease_ttl.subsec_nanos() != 0 {
        return Err(Problem::invalid(
            "store.lease_ttl",
            format!(
                "store.lease_ttl = \"{}\" is not whole seconds; etcd leases are granted in seconds (e.g. \"5s\")",
                raw.lease_ttl.as_deref().unwrap_or_default().trim()
            ),
        ));
    }
    let tls = raw.tls.unwrap_or_default();
    Ok(StoreBackend::Etcd(Box::new(EtcdStoreSettings {
        etcd: crate::etcd::EtcdSettings {
            endpoints,
            ca: optional_path(tls.ca),
            cert: optional_path(tls.cert),
            key: optional_path(tls.key),
        },
        prefix,
        name,
        advertise: raw.advertise.unwrap_or_else(|| advertised(listen, https)),
        advertise_http: raw
            .advertise_http
            .unwrap_or_else(|| advertised(http_listen, false)),
        lease_ttl,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PACKAGED: &str = include_str!("../../packaging/config/coordinator.toml");

    fn load(src: &str) -> CoordinatorConfig {
        CoordinatorConfig::from_toml(src, &CoordinatorOverrides::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(src: &str) -> String {
        match CoordinatorConfig::from_toml(src, &CoordinatorOverrides::default()) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_lease_ttl_must_be_whole_seconds() {
        let etcd = |ttl: &str| {
            format!("[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"{ttl}\"\n")
        };
        match load(&etcd("7s")).store {
            StoreBackend::Etcd(e) => assert_eq!(e.lease_ttl, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        let e = err(&etcd("5500ms"));
        assert!(
            e.contains("store.lease_ttl") && e.contains("whole seconds"),
            "{e}"
        );
        assert!(err(&etcd("1s")).contains("out of range"));
    }

    #[test]
    fn allowed_env_is_read_and_checked() {
        assert!(load("").allowed_env.is_empty());
        assert!(!load("").adopt_unsigned_replicas);
        assert!(load("adopt_unsigned_replicas = true\n").adopt_unsigned_replicas);
        assert_eq!(
            load("allowed_env = [\"PYTHONPATH\", \"LD_*\"]\n").allowed_env,
            vec!["PYTHONPATH", "LD_*"]
        );
        let e = err("allowed_env = [\"=\"]\n");
        assert!(e.contains("allowed_env entry `=` is invalid"), "{e}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = load("");
        assert_eq!(c.listen, "0.0.0.0:7460".parse().unwrap());
        assert_eq!(c.http_listen, "0.0.0.0:7461".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/gpufleet/coordinator"));
        assert_eq!(c.tick, Duration::from_secs(1));
        assert_eq!(c.node_suspect_after, Duration::from_secs(10));
        assert_eq!(c.node_lost_after, Duration::from_secs(30));
        assert_eq!(c.reconnect_grace, Duration::from_secs(30));
        assert_eq!(c.event_log_capacity, 10_000);
        assert!(!c.tls.enabled());
        assert_eq!(c.auth.tokens_file, None);
    }

    #[test]
    fn the_packaged_file_documents_the_defaults() {
        assert_eq!(load(PACKAGED), load(""));
    }

    #[test]
    fn limits_http_and_snapshots_are_read_and_checked() {
        let c = load("store_snapshots = 0\n[http]\nanonymous_endpoints = true\n[limits]\nmax_connections = 100\nmax_connections_per_peer = 10\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\nmax_agent_sessions = 50\n");
        assert_eq!(c.store_snapshots, 0);
        assert!(c.http.anonymous_endpoints);
        assert_eq!(
            c.limits,
            ConnectionLimits {
                max_connections: 100,
                max_connections_per_peer: 10,
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(30),
                max_agent_sessions: 50,
            }
        );
        let e = err("[limits]\nmax_agent_sessions = 0\n");
        assert!(e.contains("limits.max_agent_sessions"), "{e}");
        let e = err("[limits]\nmax_connections = 100\nmax_connections_per_peer = 200\n");
        assert!(
            e.contains("line 3") && e.contains("must not exceed limits.max_connections (100)"),
            "{e}"
        );
        let e = err("[limits]\nmax_connections = 0\n");
        assert!(e.contains("limits.max_connections"), "{e}");
        let e = err("[limits]\nheader_read_timeout = \"0s\"\n");
        assert!(e.contains("limits.header_read_timeout"), "{e}");
        let e = err("[http]\nanonymous = true\n");
        assert!(e.contains("anonymous"), "{e}");
    }

    #[test]
    fn flags_beat_the_file() {
        let src = "listen = \"127.0.0.1:1\"\nhttp_listen = \"127.0.0.1:2\"\ndata_dir = \"/file\"\n";
        let o = CoordinatorOverrides {
            config: None,
            listen: Some("127.0.0.1:3".parse().unwrap()),
            http_listen: Some("127.0.0.1:4".parse().unwrap()),
            data_dir: Some("/flag".into()),
        };
        let c = CoordinatorConfig::from_toml(src, &o).unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.http_listen.port(), 4);
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        let c = load(src);
        assert_eq!((c.listen.port(), c.http_listen.port()), (1, 2));
        assert_eq!(c.data_dir, PathBuf::from("/file"));
    }

    #[test]
    fn file_values_are_read() {
        let c = load(
            "tick = \"100ms\"\nnode_suspect_after = \"2s\"\nnode_lost_after = \"5s\"\nreconnect_grace = \"0s\"\nevent_log_capacity = 500\n[auth]\ntokens_file = \"/etc/gpufleet/tokens\"\n",
        );
        assert_eq!(c.tick, Duration::from_millis(100));
        assert_eq!(c.node_lost_after, Duration::from_secs(5));
        assert_eq!(c.reconnect_grace, Duration::ZERO);
        assert_eq!(c.event_log_capacity, 500);
        assert_eq!(
            c.auth.tokens_file,
            Some(PathBuf::from("/etc/gpufleet/tokens"))
        );
    }

    #[test]
    fn unknown_keys_name_line_and_allowed_keys() {
        let e = err("tick = \"1s\"\ntikc = \"1s\"\n");
        assert!(
            e.starts_with("coordinator config: line 2: unknown key `tikc` in the coordinator config; allowed keys: listen, http_listen"),
            "{e}"
        );
        let e = err("[auth]\ntoken_file = \"/x\"\n");
        assert!(
            e.contains("line 2: unknown key `token_file` in [auth]; allowed keys: tokens_file"),
            "{e}"
        );
    }

    #[test]
    fn rules_and_their_messages() {
        let e = err("tick = \"10ms\"\n");
        assert_eq!(
            e,
            "coordinator config: line 1: tick = \"10ms\" is out of range; allowed: 50ms..=1m"
        );
        let e = err("node_suspect_after = \"30s\"\nnode_lost_after = \"20s\"\n");
        assert!(
            e.ends_with(
                "line 2: node_lost_after (20s) must be longer than node_suspect_after (30s)"
            ),
            "{e}"
        );
        let e = err("node_lost_after = \"10s\"\n");
        assert!(
            e.contains("must be longer than node_suspect_after (10s)"),
            "{e}"
        );
        let e = err("event_log_capacity = -5\n");
        assert!(
            e.ends_with("event_log_capacity = -5 must be ≥ 0; allowed: 100..=1000000"),
            "{e}"
        );
        let e = err("event_log_capacity = 5\n");
        assert!(
            e.ends_with("event_log_capacity = 5 is out of range; allowed: 100..=1000000"),
            "{e}"
        );
        let e = err("listen = \"0.0.0.0\"\n");
        assert!(e.contains("listen `0.0.0.0` is not an address"), "{e}");
        let e = err("listen = \"0.0.0.0:7461\"\n");
        assert!(e.contains("the gRPC and HTTP ports must differ"), "{e}");
        let e = err("reconnect_grace = \"2h\"\n");
        assert!(e.contains("allowed: 0s..=1h"), "{e}");
        let e = err("[tls]\ncert = \"/c.pem\"\n");
        assert!(e.contains("tls.ca and tls.key must be set too"), "{e}");
        let e = err("data_dir = \"\"\n");
        assert!(e.contains("data_dir must not be empty"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "\n\ntick = \"2m\"\n").unwrap();
        let o = CoordinatorOverrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let e = CoordinatorConfig::load(&o).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 3: tick = \"2m\" is out of range; allowed: 50ms..=1m",
                path.display()
            )
        );
        let o = CoordinatorOverrides {
            config: Some(dir.path().join("nope.toml")),
            ..Default::default()
        };
        assert!(CoordinatorConfig::load(&o)
            .unwrap_err()
            .to_string()
            .contains("nope.toml: cannot read"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(src in "\\PC*") {
            let _ = CoordinatorConfig::from_toml(&src, &CoordinatorOverrides::default());
        }
    }
}
