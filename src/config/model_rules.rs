//! The model spec as written (every key optional, unknown keys refused) and
//! the rules that turn it into a [`ModelSpec`], one message per bad value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{
    ModelSpec, Preset, ScalingSpec, ServerSpec, SloKind, WarmMode, WarmPolicy, PLACEHOLDERS,
};
use super::problem::{duration_in, int_in, size, Problem};
use crate::domain::MetricsPort;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const TIB: u64 = 1 << 40;

const NAME_RULE: &str =
    "allowed: 1-63 characters of a-z, 0-9 and -, starting and ending with a letter or digit";

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spread: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<RawServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling: Option<RawScaling>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm: Option<RawWarm>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpus: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_port: Option<RawPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<i64>,
}

/// `metrics_port = 8002` or `metrics_port = "{metrics_port}"`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawScaling {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_ongoing_requests: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_p95_latency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_gpu_utilization: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_kv_cache_usage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stable_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    panic_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    panic_threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tolerance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale_down_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale_to_zero_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_scale_down_step: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prescale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale_down_hold_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_start_aware: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_from_arrivals: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prescale_max_error: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slo_kind: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawWarm {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    standby_nodes: Option<i64>,
}

pub(super) fn parse(src: &str) -> Result<ModelSpec, Problem> {
    let raw: RawSpec =
        toml::from_str(src).map_err(|e| Problem::from_toml(src, &e, "the model spec"))?;
    validate(raw).map_err(|p| p.locate(src))
}

fn validate(raw: RawSpec) -> Result<ModelSpec, Problem> {
    let name = raw
        .name
        .ok_or_else(|| Problem::invalid("name", format!("name is required; {NAME_RULE}")))?;
    check_name(&name)?;

    let weights = raw.weights.ok_or_else(|| {
        Problem::invalid(
            "weights",
            "weights is required: the absolute path of the model's weights",
        )
    })?;
    if !weights.starts_with('/') {
        return Err(Problem::invalid(
            "weights",
            format!("weights `{weights}` must be an absolute path, e.g. \"/srv/models/{name}\""),
        ));
    }

    if raw.replicas.is_some() && raw.scaling.is_some() {
        return Err(Problem::invalid(
            "replicas",
            "use either replicas = N or a [scaling] table, not both",
        ));
    }
    let replicas = int_in("replicas", raw.replicas.unwrap_or(1), 0..=1000u32)?;

    let server = validate_server(raw.server.ok_or_else(|| {
        Problem::invalid(
            "server",
            "a [server] table is required, with at least command and gpu_memory",
        )
    })?)?;
    let scaling = raw.scaling.map(validate_scaling).transpose()?;
    if let Some(sc) = &scaling {
        check_signals_exported(sc, server.preset)?;
    }
    let warm = validate_warm(raw.warm.unwrap_or_default())?;

    Ok(ModelSpec {
        name,
        weights,
        replicas,
        spread: raw.spread.unwrap_or(false),
        server,
        scaling,
        warm,
    })
}

/// A target on a signal the engine never exports would silently never act
/// (and, once missing, hold the count): refuse it, naming what the preset
/// does export.
fn check_signals_exported(sc: &ScalingSpec, preset: Preset) -> Result<(), Problem> {
    let refuse = |key: &str, signal: &str, ok: fn(Preset) -> bool| {
        let allowed: Vec<&str> = Preset::ALL
            .into_iter()
            .filter(|p| ok(*p))
            .map(Preset::as_str)
            .collect();
        Problem::invalid(
            key,
            format!(
                "{key} needs {signal}, and the {preset} preset exports none (it exports {}); allowed with presets {}",
                preset.exports(),
                allowed.join(", ")
            ),
        )
    };
    if sc.max_p95_latency.is_some() && !preset.exports_latency() {
        return Err(refuse(
            "scaling.max_p95_latency",
            "a request latency",
            Preset::exports_latency,
        ));
    }
    if sc.target_kv_cache_usage.is_some() && !preset.exports_kv_cache() {
        return Err(refuse(
            "scaling.target_kv_cache_usage",
            "a KV-cache use",
            Preset::exports_kv_cache,
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Problem> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok = (1..=63).contains(&name.len())
        && ok_chars
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid(
            "name",
            format!("name {} is invalid; {NAME_RULE}", crate::api::quoted(name)),
        ))
    }
}

fn validate_server(raw: RawServer) -> Result<ServerSpec, Problem> {
    let preset = match raw.preset {
        Some(p) => p
            .parse::<Preset>()
            .map_err(|e| Problem::invalid("server.preset", format!("server.preset: {e}")))?,
        None => Preset::Generic,
    };

    let command = raw.command.unwrap_or_default();
    if command.first().is_none_or(|c| c.trim().is_empty()) {
        return Err(Problem::invalid(
            "server.command",
            "server.command must name a program, e.g. [\"/usr/bin/vllm\", \"serve\", \"{weights}\", \"--port\", \"{port}\"]",
        ));
    }
    for (i, arg) in command.iter().enumerate() {
        check_placeholders(&format!("server.command[{i}]"), arg)?;
    }

    let env = raw.env.unwrap_or_default();
    for (key, value) in &env {
        let valid = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(Problem::invalid(
                "server.env",
                format!("server.env key `{key}` is not a variable name; allowed: A-Z, a-z, 0-9 and _, not starting with a digit"),
            ));
        }
        check_placeholders(&format!("server.env.{key}"), value)?;
    }

    let gpus = int_in("server.gpus", raw.gpus.unwrap_or(1), 0..=16u32)?;
    let gpu_memory_bytes = match (gpus, raw.gpu_memory) {
        (0, Some(_)) => {
            return Err(Problem::invalid(
                "server.gpu_memory",
                "server.gpu_memory is for GPU replicas; with gpus = 0 the replica asks for cpu and memory",
            ))
        }
        (0, None) => 0,
        (_, None) => {
            return Err(Problem::invalid(
                "server.gpu_memory",
                "server.gpu_memory is required: the free memory each GPU needs, e.g. \"20GiB\" (or gpus = 0 for a CPU replica)",
            ))
        }
        (_, Some(gpu_memory)) => {
            let bytes = size("server.gpu_memory", &gpu_memory)?;
            if bytes == 0 || bytes > TIB {
                return Err(Problem::invalid(
                    "server.gpu_memory",
                    format!("server.gpu_memory = \"{gpu_memory}\" is out of range; allowed: more than 0, up to 1TiB"),
                ));
            }
            bytes
        }
    };
    // A CPU replica is placed by what it asks of the host: one CPU unless
    // it says otherwise, and the RAM it names.
    let cpu = match raw.cpu {
        Some(c) => positive("server.cpu", c, 1024.0, "more than 0, up to 1024 CPUs")?,
        None if gpus == 0 => 1.0,
        None => 0.0,
    };
    let memory_bytes = match raw.memory {
        Some(m) => {
            let bytes = size("server.memory", &m)?;
            if bytes == 0 || bytes > 64 * TIB {
                return Err(Problem::invalid(
                    "server.memory",
                    format!("server.memory = \"{m}\" is out of range; allowed: more than 0, up to 64TiB"),
                ));
            }
            bytes
        }
        None if gpus == 0 => {
            return Err(Problem::invalid(
                "server.memory",
                "server.memory is required with gpus = 0: the RAM a CPU replica needs on its host, e.g. \"4GiB\"",
            ))
        }
        None => 0,
    };

    let ready_timeout = duration_in(
        "server.ready_timeout",
        raw.ready_timeout.as_deref().unwrap_or("20m"),
        SECOND..=DAY,
    )?;
    let stop_timeout = duration_in(
        "server.stop_timeout",
        raw.stop_timeout.as_deref().unwrap_or("30s"),
        SECOND..=HOUR,
    )?;
    let health_path = raw
        .health_path
        .map(|p| http_path("server.health_path", p))
        .transpose()?;
    let metrics_path = raw
        .metrics_path
        .map(|p| http_path("server.metrics_path", p))
        .transpose()?;
    let max_concurrency = raw
        .max_concurrency
        .map(|n| int_in("server.max_concurrency", n, 1..=100_000u32))
        .transpose()?;

    let metrics_port = raw
        .metrics_port
        .map(|p| {
            let text = match p {
                RawPort::Number(n) => n.to_string(),
                RawPort::Text(t) => t,
            };
            MetricsPort::parse(&text).map_err(|e| {
                Problem::invalid("server.metrics_port", format!("server.metrics_port: {e}"))
            })
        })
        .transpose()?;

    Ok(ServerSpec {
        preset,
        command,
        env,
        gpus,
        gpu_memory_bytes,
        cpu,
        memory_bytes,
        ready_timeout,
        stop_timeout,
        health_path,
        metrics_path,
        metrics_port,
        max_concurrency,
    })
}

/// `{name}` with a lowercase identifier inside is a placeholder and must be
/// one the agent knows; other braces (JSON arguments) are left alone.
fn check_placeholders(key: &str, value: &str) -> Result<(), Problem> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let inner = &after[..close];
        let is_placeholder = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if is_placeholder && !PLACEHOLDERS.contains(&inner) {
            let allowed: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
            return Err(Problem::invalid(
                key,
                format!(
                    "{key} uses unknown placeholder `{{{inner}}}`; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn http_path(key: &str, path: String) -> Result<String, Problem> {
    if path.starts_with('/') && !path.contains(char::is_whitespace) {
        Ok(path)
    } else {
        Err(Problem::invalid(
            key,
            format!("{key} `{path}` must be an HTTP path starting with /, e.g. \"/health\""),
        ))
    }
}

fn validate_scaling(raw: RawScaling) -> Result<ScalingSpec, Problem> {
    let max_replicas = raw.max_replicas.ok_or_else(|| {
        Problem::invalid(
            "scaling.max_replicas",
            "scaling.max_replicas is required in a [scaling] table; allowed: 1..=1000",
        )
    })?;
    let max_replicas = int_in("scaling.max_replicas", max_replicas, 1..=1000u32)?;
    let min_replicas = int_in(
        "scaling.min_replicas",
        raw.min_replicas.unwrap_or(1),
        0..=max_replicas,
    )?;

    let target_ongoing_requests = positive(
        "scaling.target_ongoing_requests",
        raw.target_ongoing_requests.unwrap_or(8.0),
        100_000.0,
        "(0, 100000]",
    )?;
    let max_p95_latency = raw
        .max_p95_latency
        .map(|v| {
            duration_in(
                "scaling.max_p95_latency",
                &v,
                Duration::from_millis(1)..=HOUR,
            )
        })
        .transpose()?;
    let target_gpu_utilization = raw
        .target_gpu_utilization
        .map(|v| positive("scaling.target_gpu_utilization", v, 1.0, "(0, 1]"))
        .transpose()?;
    let target_kv_cache_usage = raw
        .target_kv_cache_usage
        .map(|v| positive("scaling.target_kv_cache_usage", v, 1.0, "(0, 1]"))
        .transpose()?;

    let window = Duration::from_millis(1)..=HOUR;
    let stable_window = duration_in(
        "scaling.stable_window",
        raw.stable_window.as_deref().unwrap_or("60s"),
        window.clone(),
    )?;
    let panic_window = duration_in(
        "scaling.panic_window",
        raw.panic_window.as_deref().unwrap_or("6s"),
        window,
    )?;
    if panic_window > stable_window {
        return Err(Problem::invalid(
            "scaling.panic_window",
            format!(
                "scaling.panic_window ({}) must not be longer than scaling.stable_window ({})",
                super::units::format_duration(panic_window),
                super::units::format_duration(stable_window)
            ),
        ));
    }
    let panic_threshold = raw.panic_threshold.unwrap_or(2.0);
    if !(1.1..=10.0).contains(&panic_threshold) {
        let why = if panic_threshold < 0.0 {
            "must be ≥ 0"
        } else {
            "is out of range"
        };
        return Err(Problem::invalid(
            "scaling.panic_threshold",
            format!("scaling.panic_threshold = {panic_threshold} {why}; allowed: 1.1..=10"),
        ));
    }
    let tolerance = raw.tolerance.unwrap_or(0.1);
    if !(0.0..=0.5).contains(&tolerance) {
        let why = if tolerance < 0.0 {
            "must be ≥ 0"
        } else {
            "is out of range"
        };
        return Err(Problem::invalid(
            "scaling.tolerance",
            format!("scaling.tolerance = {tolerance} {why}; allowed: 0..=0.5"),
        ));
    }
    let scale_down_delay = duration_in(
        "scaling.scale_down_delay",
        raw.scale_down_delay.as_deref().unwrap_or("5m"),
        Duration::ZERO..=DAY,
    )?;
    let scale_to_zero_after = duration_in(
        "scaling.scale_to_zero_after",
        raw.scale_to_zero_after.as_deref().unwrap_or("15m"),
        SECOND..=7 * DAY,
    )?;
    let max_scale_down_step = int_in(
        "scaling.max_scale_down_step",
        raw.max_scale_down_step.unwrap_or(1),
        1..=1000u32,
    )?;
    let scale_down_hold_factor = raw.scale_down_hold_factor.unwrap_or(2.0);
    if !(0.0..=100.0).contains(&scale_down_hold_factor) {
        return Err(Problem::invalid(
            "scaling.scale_down_hold_factor",
            format!(
                "scaling.scale_down_hold_factor = {scale_down_hold_factor} is out of range; \
                 allowed: 0..=100 (0 keeps the fixed scale_down_delay)"
            ),
        ));
    }
    let prescale_max_error = positive(
        "scaling.prescale_max_error",
        raw.prescale_max_error.unwrap_or(0.1),
        10.0,
        "(0, 10]",
    )?;
    let (slo, slo_kind) = validate_slo(raw.slo.as_deref(), raw.slo_kind.as_deref())?;

    Ok(ScalingSpec {
        min_replicas,
        max_replicas,
        target_ongoing_requests,
        max_p95_latency,
        target_gpu_utilization,
        target_kv_cache_usage,
        stable_window,
        panic_window,
        panic_threshold,
        tolerance,
        scale_down_delay,
        scale_to_zero_after,
        max_scale_down_step,
        prescale: raw.prescale.unwrap_or(true),
        scale_down_hold_factor,
        cold_start_aware: raw.cold_start_aware.unwrap_or(true),
        size_from_arrivals: raw.size_from_arrivals.unwrap_or(true),
        prescale_max_error,
        slo,
        slo_kind,
    })
}

/// The SLO and what it bounds: `slo_kind` names one of the kinds and needs
/// an `slo` to apply to.
fn validate_slo(
    slo: Option<&str>,
    kind: Option<&str>,
) -> Result<(Option<Duration>, SloKind), Problem> {
    let slo = slo
        .map(|v| duration_in("scaling.slo", v, Duration::from_millis(1)..=HOUR))
        .transpose()?;
    let Some(kind) = kind else {
        return Ok((slo, SloKind::E2e));
    };
    let kind = kind
        .parse::<SloKind>()
        .map_err(|e| Problem::invalid("scaling.slo_kind", format!("scaling.slo_kind: {e}")))?;
    if slo.is_none() {
        return Err(Problem::invalid(
            "scaling.slo_kind",
            "scaling.slo_kind has no effect without scaling.slo; set slo = \"2s\" (say) too",
        ));
    }
    Ok((slo, kind))
}

/// A number in (0, max]; NaN and infinities fail too.
fn positive(key: &str, value: f64, max: f64, allowed: &str) -> Result<f64, Problem> {
    if value > 0.0 && value <= max {
        return Ok(value);
    }
    let why = if value <= 0.0 {
        "must be > 0"
    } else {
        "is out of range"
    };
    Err(Problem::invalid(
        key,
        format!("{key} = {value} {why}; allowed: {allowed}"),
    ))
}

fn validate_warm(raw: RawWarm) -> Result<WarmPolicy, Problem> {
    let mode = match raw.mode {
        Some(m) => m
            .parse::<WarmMode>()
            .map_err(|e| Problem::invalid("warm.mode", format!("warm.mode: {e}")))?,
        None => WarmMode::Off,
    };
    let default_standby = if mode == WarmMode::Off { 0 } else { 1 };
    let standby_nodes = int_in(
        "warm.standby_nodes",
        raw.standby_nodes.unwrap_or(default_standby),
        0..=64u32,
    )?;
    if mode == WarmMode::Off && standby_nodes > 0 {
        return Err(Problem::invalid(
            "warm.standby_nodes",
            "warm.standby_nodes has no effect with warm.mode = \"off\"; set mode to standby or predictive",
        ));
    }
    Ok(WarmPolicy {
        mode,
        standby_nodes,
    })
}

/// Back to the written form, exact: durations to the nanosecond and sizes to
/// the byte, so `parse(to_toml(spec)) == spec`.
pub(super) fn to_toml(spec: &ModelSpec) -> String {
    let s = &spec.server;
    let raw = RawSpec {
        name: Some(spec.name.clone()),
        weights: Some(spec.weights.clone()),
        replicas: spec.scaling.is_none().then_some(i64::from(spec.replicas)),
        spread: spec.spread.then_some(true),
        server: Some(RawServer {
            preset: Some(s.preset.as_str().to_string()),
            command: Some(s.command.clone()),
            env: (!s.env.is_empty()).then(|| s.env.clone()),
            gpus: Some(i64::from(s.gpus)),
            gpu_memory: (s.gpus > 0).then(|| exact_size(s.gpu_memory_bytes)),
            cpu: (s.cpu > 0.0).then_some(s.cpu),
            memory: (s.memory_bytes > 0).then(|| exact_size(s.memory_bytes)),
            ready_timeout: Some(exact_duration(s.ready_timeout)),
            stop_timeout: Some(exact_duration(s.stop_timeout)),
            health_path: s.health_path.clone(),
            metrics_path: s.metrics_path.clone(),
            metrics_port: s.metrics_port.map(|p| match p {
                MetricsPort::Fixed(n) => RawPort::Number(i64::from(n)),
                other => RawPort::Text(other.as_text()),
            }),
            max_concurrency: s.max_concurrency.map(i64::from),
        }),
        scaling: spec.scaling.as_ref().map(|c| RawScaling {
            min_replicas: Some(i64::from(c.min_replicas)),
            max_replicas: Some(i64::from(c.max_replicas)),
            target_ongoing_requests: Some(c.target_ongoing_requests),
            max_p95_latency: c.max_p95_latency.map(exact_duration),
            target_gpu_utilization: c.target_gpu_utilization,
            target_kv_cache_usage: c.target_kv_cache_usage,
            stable_window: Some(exact_duration(c.stable_window)),
            panic_window: Some(exact_duration(c.panic_window)),
            panic_threshold: Some(c.panic_threshold),
            tolerance: Some(c.tolerance),
            scale_down_delay: Some(exact_duration(c.scale_down_delay)),
            scale_to_zero_after: Some(exact_duration(c.scale_to_zero_after)),
            max_scale_down_step: Some(i64::from(c.max_scale_down_step)),
            prescale: Some(c.prescale),
            scale_down_hold_factor: Some(c.scale_down_hold_factor),
            cold_start_aware: Some(c.cold_start_aware),
            size_from_arrivals: Some(c.size_from_arrivals),
            prescale_max_error: Some(c.prescale_max_error),
            slo: c.slo.map(exact_duration),
            slo_kind: c.slo.map(|_| c.slo_kind.as_str().to_string()),
        }),
        warm: Some(RawWarm {
            mode: Some(spec.warm.mode.as_str().to_string()),
            standby_nodes: Some(i64::from(spec.warm.standby_nodes)),
        }),
    };
    // Serializing plain strings, numbers and tables cannot fail; an empty
    // document would still be refused by `parse`, never silently accepted.
    toml::to_string(&raw).unwrap_or_default()
}

fn exact_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_string()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn exact_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
#[path = "model_rules_tests.rs"]
mod tests;
