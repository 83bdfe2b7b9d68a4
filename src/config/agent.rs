//! The agent's settings: `/etc/gpufleet/agent.toml` merged with the flags of
//! `gpufleet agent`, flags winning, every value checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::problem::{duration_in, int_in, size, socket_addr, Problem};
use super::{read_config, ConfigError, RawTls, TlsSettings};
use crate::agent::gpu::GpuBackend;

pub const DEFAULT_AGENT_CONFIG: &str = "/etc/gpufleet/agent.toml";

/// Flags of `gpufleet agent`; each one set beats the file.
#[derive(Debug, Default, Clone)]
pub struct AgentOverrides {
    pub config: Option<PathBuf>,
    pub coordinator: Option<String>,
    pub node_name: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub gpu_backend: Option<GpuBackend>,
    pub simulated_gpus: Option<u32>,
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub node_name: String,
    /// `http://` or `https://` URLs of the coordinators' gRPC ports: one,
    /// or each of several sharing an etcd store (the agent finds the leader).
    pub coordinators: Vec<String>,
    pub state_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub report_interval: Duration,
    /// How often each ready replica's metrics endpoint is read. A load step
    /// is reported as soon as a scrape sees it, so this bounds how late the
    /// autoscaler hears of it.
    pub scrape_interval: Duration,
    /// Weights and warm paths must resolve under one of these.
    pub model_roots: Vec<PathBuf>,
    /// Empty: any program; else a model's command[0] must be one of these.
    pub allowed_executables: Vec<PathBuf>,
    /// Code-loading variables (LD_PRELOAD, PYTHONPATH, ...) a spec may set
    /// anyway: names, or prefixes ending in `*`.
    pub allowed_env: Vec<String>,
    /// Besides `model_roots`, where absolute paths in arguments may point.
    pub allowed_paths: Vec<PathBuf>,
    /// Whether arguments that are absolute paths are checked at all.
    pub check_args: bool,
    /// User the model servers run as; `None`: the agent's own.
    pub run_as: Option<String>,
    /// Whether a replica may run as root (the agent's user, with no run_as).
    pub allow_root_replicas: bool,
    /// Ports handed to replicas as `{port}`.
    pub port_range: RangeInclusive<u16>,
    pub labels: BTreeMap<String, String>,
    pub gpu: GpuSettings,
    pub warm: WarmSettings,
    pub tls: TlsSettings,
    /// Limits on the connections of the HTTP listener (`[limits]`).
    pub limits: super::coordinator::ConnectionLimits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSettings {
    pub backend: GpuBackend,
    pub sample_interval: Duration,
    pub simulated_count: u32,
    pub simulated_model: String,
    pub simulated_memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WarmSettings {
    pub budget: WarmBudget,
    /// Pin warm weights with mlock so memory pressure cannot evict them.
    pub lock: bool,
}

/// How much page cache the warmer may fill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WarmBudget {
    /// Percent of RAM, in (0, 100].
    Percent(f64),
    Bytes(u64),
}

impl WarmBudget {
    /// The budget in bytes on a host with `ram_total` bytes of RAM; never more than the RAM.
    pub fn bytes(&self, ram_total: u64) -> u64 {
        match *self {
            WarmBudget::Percent(p) => (ram_total as f64 * p / 100.0) as u64,
            WarmBudget::Bytes(b) => b.min(ram_total),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    node_name: Option<String>,
    coordinator: Option<OneOrMany>,
    state_dir: Option<String>,
    http_listen: Option<String>,
    report_interval: Option<String>,
    scrape_interval: Option<String>,
    model_roots: Option<Vec<String>>,
    allowed_executables: Option<Vec<String>>,
    allowed_env: Option<Vec<String>>,
    allowed_paths: Option<Vec<String>>,
    check_args: Option<bool>,
    run_as: Option<String>,
    allow_root_replicas: Option<bool>,
    port_range: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    gpu: Option<RawGpu>,
    warm: Option<RawWarm>,
    tls: Option<RawTls>,
    limits: Option<super::coordinator::RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    backend: Option<String>,
    sample_interval: Option<String>,
    simulated_count: Option<i64>,
    simulated_model: Option<String>,
    simulated_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarm {
    budget: Option<String>,
    lock: Option<bool>,
}

impl AgentConfig {
    /// Reads the `--config` file (which must exist) or the default file (when
    /// present) and applies the flags.
    pub fn load(o: &AgentOverrides) -> Result<AgentConfig, ConfigError> {
        let (src, origin) = read_config(o.config.as_deref(), Path::new(DEFAULT_AGENT_CONFIG))?;
        from_toml_at(&src, o, origin)
    }

    /// Builds the settings from TOML text and the flags; errors say "agent config".
    pub fn from_toml(src: &str, o: &AgentOverrides) -> Result<AgentConfig, ConfigError> {
        from_toml_at(src, o, "agent config".to_string())
    }
}

fn from_toml_at(src: &str, o: &AgentOverrides, origin: String) -> Result<AgentConfig, ConfigError> {
    let invalid = |problem: Problem| ConfigError::Invalid {
        origin: origin.clone(),
        problem: problem.locate(src),
    };
    let raw: RawAgent = toml::from_str(src)
        .map_err(|e| invalid(Problem::from_toml(src, &e, "the agent config")))?;
    validate(raw, o).map_err(invalid)
}

fn validate(raw: RawAgent, o: &AgentOverrides) -> Result<AgentConfig, Problem> {
    let node_name = match (&o.node_name, raw.node_name) {
        (Some(flag), _) => check_node_name("--node-name", flag.clone())?,
        (None, Some(file)) => check_node_name("node_name", file)?,
        (None, None) => check_node_name("node_name", hostname()?)?,
    };

    let coordinators = match (&o.coordinator, raw.coordinator) {
        (Some(flag), _) => check_urls("--coordinator", flag.split(',').map(str::to_string))?,
        (None, Some(file)) => check_urls("coordinator", file.into_list())?,
        (None, None) => vec!["http://127.0.0.1:7460".to_string()],
    };

    let state_dir = match (&o.state_dir, raw.state_dir) {
        (Some(flag), _) => flag.clone(),
        (None, Some(file)) if file.trim().is_empty() => {
            return Err(Problem::invalid(
                "state_dir",
                "state_dir must not be empty; default: \"/var/lib/gpufleet\"",
            ))
        }
        (None, Some(file)) => PathBuf::from(file),
        (None, None) => PathBuf::from("/var/lib/gpufleet"),
    };

    let http_listen = match (o.http_listen, raw.http_listen) {
        (Some(flag), _) => flag,
        (None, Some(file)) => socket_addr("http_listen", &file)?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 7462)),
    };

    let report_interval = duration_in(
        "report_interval",
        raw.report_interval.as_deref().unwrap_or("1s"),
        Duration::from_millis(100)..=Duration::from_secs(60),
    )?;
    let scrape_interval = duration_in(
        "scrape_interval",
        raw.scrape_interval.as_deref().unwrap_or("500ms"),
        Duration::from_millis(100)..=Duration::from_secs(60),
    )?;

    let model_roots = absolute_paths(
        "model_roots",
        raw.model_roots
            .unwrap_or_else(|| vec!["/srv/models".into()]),
    )?;
    let allowed_executables = absolute_paths(
        "allowed_executables",
        raw.allowed_executables.unwrap_or_default(),
    )?;
    let allowed_env = check_allowed_env(raw.allowed_env)?;
    let allowed_paths = absolute_paths("allowed_paths", raw.allowed_paths.unwrap_or_default())?;
    let run_as = check_run_as(raw.run_as)?;
    let port_range = parse_port_range(raw.port_range.as_deref().unwrap_or("20000-20999"))?;
    let labels = check_labels(raw.labels.unwrap_or_default())?;
    let gpu = validate_gpu(raw.gpu.unwrap_or_default(), o)?;
    let warm = validate_warm(raw.warm.unwrap_or_default())?;
    let tls = raw.tls.unwrap_or_default().validate()?;

    Ok(AgentConfig {
        node_name,
        coordinators,
        state_dir,
        http_listen,
        report_interval,
        scrape_interval,
        model_roots,
        allowed_executables,
        allowed_env,
        allowed_paths,
        check_args: raw.check_args.unwrap_or(true),
        run_as,
        allow_root_replicas: raw.allow_root_replicas.unwrap_or(false),
        port_range,
        labels,
        gpu,
        warm,
        tls,
        limits: super::coordinator::check_agent_limits(raw.limits)?,
    })
}

fn hostname() -> Result<String, Problem> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .ok_or_else(|| {
            Problem::invalid(
                "node_name",
                "node_name is not set and the hostname cannot be read; set node_name or --node-name",
            )
        })
}

/// What a node name may be, in words, for error messages.
pub const NODE_NAME_RULE: &str = "1-63 characters of A-Z, a-z, 0-9, '.', '_' and '-'";

/// The one rule for node names: the agent's config, the coordinator's
/// session check and `tls init` all use it.
pub fn is_valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_node_name(key: &str, name: String) -> Result<String, Problem> {
    if is_valid_node_name(&name) {
        Ok(name)
    } else {
        Err(Problem::invalid(
            key,
            format!(
                "{key} {} is invalid; allowed: {NODE_NAME_RULE}",
                crate::api::quoted(&name)
            ),
        ))
    }
}

/// A TOML value that may be one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_list(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Coordinator URLs: at least one, each checked, no repeats.
pub(super) fn check_urls(
    key: &str,
    urls: impl IntoIterator<Item = String>,
) -> Result<Vec<String>, Problem> {
    let mut out: Vec<String> = Vec::new();
    for url in urls {
        let url = check_url(key, &url)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        return Err(Problem::invalid(
            key,
            format!("{key} is empty; give one coordinator URL or several, e.g. [\"http://c1:7460\", \"http://c2:7460\"]"),
        ));
    }
    if out.iter().any(|u| u.starts_with("https://")) && out.iter().any(|u| u.starts_with("http://"))
    {
        return Err(Problem::invalid(
            key,
            format!(
                "{key} mixes http:// and https:// URLs; all coordinators of a fleet use the same"
            ),
        ));
    }
    Ok(out)
}

pub(super) fn check_url(key: &str, url: &str) -> Result<String, Problem> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url.to_string()),
        _ => Err(Problem::invalid(
            key,
            format!("{key} `{url}` must be a URL starting with http:// or https://, e.g. \"http://coord:7460\""),
        )),
    }
}

fn absolute_paths(key: &str, paths: Vec<String>) -> Result<Vec<PathBuf>, Problem> {
    paths
        .into_iter()
        .map(|p| {
            if p.starts_with('/') {
                Ok(PathBuf::from(p))
            } else {
                Err(Problem::invalid(
                    key,
                    format!("{key} entry `{p}` must be an absolute path"),
                ))
            }
        })
        .collect()
}

/// `allowed_env` of either config: names, or prefixes ending in `*`.
pub(super) fn check_allowed_env(entries: Option<Vec<String>>) -> Result<Vec<String>, Problem> {
    let entries = entries.unwrap_or_default();
    if let Some(bad) = entries
        .iter()
        .find(|e| !crate::security::env_policy::valid_allowed_env(e))
    {
        return Err(Problem::invalid(
            "allowed_env",
            format!(
                "allowed_env entry `{bad}` is invalid; allowed: {}",
                crate::security::env_policy::ALLOWED_ENV_RULE
            ),
        ));
    }
    Ok(entries)
}

fn check_run_as(run_as: Option<String>) -> Result<Option<String>, Problem> {
    let Some(user) = run_as
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    if user == "root" || user == "0" {
        return Err(Problem::invalid(
            "run_as",
            "run_as = \"root\" is refused: name an unprivileged user such as \"gpufleet-models\"; to run model servers as root deliberately, leave run_as empty and set allow_root_replicas = true",
        ));
    }
    let ok = user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(Some(user))
    } else {
        Err(Problem::invalid(
            "run_as",
            format!("run_as `{user}` is not a user name; allowed: up to 32 characters of a-z, 0-9, '_', '-' and '.'"),
        ))
    }
}

fn parse_port_range(value: &str) -> Result<RangeInclusive<u16>, Problem> {
    let bad = || {
        Problem::invalid(
            "port_range",
            format!("port_range `{value}` is invalid; allowed: \"FIRST-LAST\" with 1024 <= FIRST <= LAST <= 65535, e.g. \"20000-20999\""),
        )
    };
    let (first, last) = value.trim().split_once('-').ok_or_else(bad)?;
    let first: u16 = first.trim().parse().map_err(|_| bad())?;
    let last: u16 = last.trim().parse().map_err(|_| bad())?;
    if first < 1024 || first > last {
        return Err(bad());
    }
    Ok(first..=last)
}

fn check_labels(labels: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Problem> {
    for (key, value) in &labels {
        let key_ok = (1..=63).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(Problem::invalid(
                "labels",
                format!("labels key `{key}` is invalid; allowed: 1-63 characters of A-Z, a-z, 0-9, '.', '_', '-' and '/'"),
            ));
        }
        if value.len() > 253 || value.chars().any(char::is_control) {
            return Err(Problem::invalid(
                format!("labels.{key}"),
                format!(
                    "labels.{key} is invalid; allowed: up to 253 characters, no control characters"
                ),
            ));
        }
    }
    Ok(labels)
}

fn validate_gpu(raw: RawGpu, o: &AgentOverrides) -> Result<GpuSettings, Problem> {
    let backend = match (o.gpu_backend, raw.backend) {
        (Some(flag), _) => flag,
        (None, Some(file)) => file
            .parse::<GpuBackend>()
            .map_err(|e| Problem::invalid("gpu.backend", format!("gpu.backend: {e}")))?,
        (None, None) => GpuBackend::Auto,
    };
    let sample_interval = duration_in(
        "gpu.sample_interval",
        raw.sample_interval.as_deref().unwrap_or("1s"),
        Duration::from_millis(100)..=Duration::from_secs(60),
    )?;
    let simulated_count = match (o.simulated_gpus, raw.simulated_count) {
        (Some(flag), _) => int_in("--simulated-gpus", i64::from(flag), 0..=64u32)?,
        (None, Some(file)) => int_in("gpu.simulated_count", file, 0..=64u32)?,
        (None, None) => 4,
    };
    let simulated_model = raw
        .simulated_model
        .unwrap_or_else(|| "Simulated H100 80GB".to_string());
    if simulated_model.trim().is_empty() || simulated_model.len() > 96 {
        return Err(Problem::invalid(
            "gpu.simulated_model",
            "gpu.simulated_model must be 1-96 characters, e.g. \"Simulated H100 80GB\"",
        ));
    }
    let memory = raw.simulated_memory.as_deref().unwrap_or("80GiB");
    let simulated_memory_bytes = size("gpu.simulated_memory", memory)?;
    if simulated_memory_bytes == 0 || simulated_memory_bytes > 1 << 40 {
        return Err(Problem::invalid(
            "gpu.simulated_memory",
            format!("gpu.simulated_memory = \"{memory}\" is out of range; allowed: more than 0, up to 1TiB"),
        ));
    }
    Ok(GpuSettings {
        backend,
        sample_interval,
        simulated_count,
        simulated_model,
        simulated_memory_bytes,
    })
}

fn validate_warm(raw: RawWarm) -> Result<WarmSettings, Problem> {
    let text = raw.budget.unwrap_or_else(|| "50%".to_string());
    let budget = match text.trim().strip_suffix('%') {
        Some(number) => {
            let bad = || {
                Problem::invalid(
                    "warm.budget",
                    format!("warm.budget = \"{text}\" is out of range; allowed: a percent of RAM in (0%, 100%] or a size like \"200GiB\""),
                )
            };
            let p: f64 = number.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            WarmBudget::Percent(p)
        }
        None => WarmBudget::Bytes(size("warm.budget", &text).map_err(|_| {
            Problem::invalid(
                "warm.budget",
                format!("warm.budget `{text}` is neither a percent nor a size; use e.g. \"50%\" or \"200GiB\""),
            )
        })?),
    };
    Ok(WarmSettings {
        budget,
        lock: raw.lock.unwrap_or(false),
    })
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
