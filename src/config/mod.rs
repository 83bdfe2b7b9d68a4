//! Configuration: agent and coordinator TOML files and the model spec,
//! parsed in stages (raw → merged with flags → validated settings).

pub mod agent;
pub mod coordinator;
pub mod gateway;
pub mod model;
mod model_rules;
pub mod problem;
pub mod units;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use agent::{AgentConfig, AgentOverrides, GpuSettings, WarmBudget, WarmSettings};
pub use coordinator::{
    AuthSettings, CoordinatorConfig, CoordinatorOverrides, EtcdStoreSettings, StoreBackend,
};
pub use gateway::{GatewayConfig, GatewayOverrides};
pub use model::{
    ModelSpec, Preset, ScalingSpec, ServerSpec, SpecError, WarmMode, WarmPolicy, PLACEHOLDERS,
};
pub use problem::Problem;

/// A failure caused by what the operator configured, found only when the
/// daemon starts using it (a TLS key, the tokens file, a listen address that
/// is not this host's): the process exits 64 like any bad config, so systemd
/// does not restart it in a loop.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Misconfigured(pub anyhow::Error);

impl Misconfigured {
    /// Wraps an error as a config problem.
    pub fn wrap<E: Into<anyhow::Error>>(e: E) -> anyhow::Error {
        anyhow::Error::new(Misconfigured(e.into()))
    }

    /// `e`, as a config problem when `config` says it is one.
    pub fn when(config: bool, e: anyhow::Error) -> anyhow::Error {
        if config {
            Misconfigured::wrap(e)
        } else {
            e
        }
    }
}

/// A failed bind of `what` (`"HTTP on 0.0.0.0:7461 (http_listen)"`): the
/// config's fault when the address is not this host's or the port needs
/// privileges; not when the port is in use (it may free).
pub fn bind_error(e: std::io::Error, what: String) -> anyhow::Error {
    let config = matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EACCES) | Some(libc::EAFNOSUPPORT)
    );
    Misconfigured::when(
        config,
        anyhow::Error::new(e).context(format!("cannot listen for {what}")),
    )
}

/// A config file that cannot be used; the message names the file (or "agent
/// config" when the text came from elsewhere), the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: Problem },
}

impl ConfigError {
    /// The bad value, when the file was read but is wrong.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { problem, .. } => Some(problem),
        }
    }
}

/// Reads the config file: the one given, which must exist, or the default
/// one when present. Returns the text and the name errors should carry.
fn read_config(given: Option<&Path>, default: &Path) -> Result<(String, String), ConfigError> {
    let path = given.unwrap_or(default);
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, path.display().to_string())),
        Err(e) if given.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            Ok((String::new(), path.display().to_string()))
        }
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// mTLS files. All three or none; an empty string in the file means unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.ca.is_some() && self.cert.is_some() && self.key.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl RawTls {
    /// A client of the coordinator that authenticates with a token may give
    /// the CA alone; with a certificate it gives all three.
    fn validate_client(self) -> Result<TlsSettings, Problem> {
        let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
        if !blank(&self.ca) && blank(&self.cert) && blank(&self.key) {
            return Ok(TlsSettings {
                ca: problem::optional_path(self.ca),
                cert: None,
                key: None,
            });
        }
        self.validate()
    }

    fn validate(self) -> Result<TlsSettings, Problem> {
        let tls = TlsSettings {
            ca: problem::optional_path(self.ca),
            cert: problem::optional_path(self.cert),
            key: problem::optional_path(self.key),
        };
        let set = [&tls.ca, &tls.cert, &tls.key]
            .iter()
            .filter(|p| p.is_some())
            .count();
        if set != 0 && set != 3 {
            let missing: Vec<&str> = [
                ("tls.ca", &tls.ca),
                ("tls.cert", &tls.cert),
                ("tls.key", &tls.key),
            ]
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(k, _)| *k)
            .collect();
            return Err(Problem::invalid(
                missing[0],
                format!(
                    "{} must be set too: TLS needs ca, cert and key together, or none of them",
                    missing.join(" and ")
                ),
            ));
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: &str, cert: &str, key: &str) -> Result<TlsSettings, Problem> {
        RawTls {
            ca: Some(ca.into()),
            cert: Some(cert.into()),
            key: Some(key.into()),
        }
        .validate()
    }

    #[test]
    fn tls_is_all_or_nothing() {
        let none = tls("", "", "").unwrap();
        assert!(!none.enabled());
        assert_eq!(none, TlsSettings::default());
        let all = tls("/a/ca.pem", "/a/n.pem", "/a/n-key.pem").unwrap();
        assert!(all.enabled());
        let e = tls("/a/ca.pem", "", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls.cert and tls.key must be set too: TLS needs ca, cert and key together, or none of them"
        );
        assert_eq!(e.key(), Some("tls.cert"));
    }

    #[test]
    fn an_explicit_file_must_exist_the_default_need_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("agent.toml");
        let (text, origin) = read_config(None, &missing).unwrap();
        assert!(text.is_empty());
        assert!(origin.ends_with("agent.toml"));
        let e = read_config(Some(&missing), Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("agent.toml: cannot read"), "{e}");
        std::fs::write(&missing, "tick = \"1s\"\n").unwrap();
        let (text, _) = read_config(Some(&missing), Path::new("/nonexistent")).unwrap();
        assert_eq!(text, "tick = \"1s\"\n");
    }
}
