//! `gpufleet tls init`: a private CA for one fleet, the coordinator's server
//! certificate (coordinator role, its DNS names and IPs) and one client
//! certificate per agent (agent role, bound to its node name). ECDSA P-256
//! keys from ring, written 0600; nothing is overwritten without `--force`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::identity::{NODE_URI_PREFIX, ROLE_AGENT_URI, ROLE_COORDINATOR_URI};

/// Names the coordinator's certificate is valid for when none are given.
pub const DEFAULT_COORDINATOR_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Longest validity `--days` accepts (100 years).
pub const MAX_DAYS: u32 = 36_500;
/// Certificates start an hour in the past so a host whose clock lags a
/// little does not see them as not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "agent name `{0}` is invalid; allowed: 1-63 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    BadAgentName(String),
    #[error(
        "agent name `{0}` is reserved: its files would clash with the CA's or the coordinator's"
    )]
    ReservedAgentName(String),
    #[error("agent `{0}` is listed twice")]
    DuplicateAgent(String),
    #[error("coordinator name `{name}` is neither a DNS name nor an IP address: {why}")]
    BadCoordinatorName { name: String, why: String },
    #[error("--days {0} is out of range; allowed: 1..={MAX_DAYS}")]
    BadDays(u32),
    #[error("{} already exist{} in {}; pass --force to replace {}", list(.0), if .0.len() == 1 { "s" } else { "" }, .1.display(), if .0.len() == 1 { "it" } else { "them" })]
    WouldOverwrite(Vec<String>, PathBuf),
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CertError {
    /// A refusal of the flags as given (a name, a range, a missing
    /// `--force`), not a failure to do what they ask.
    pub fn is_usage(&self) -> bool {
        !matches!(self, CertError::Generate { .. } | CertError::Write { .. })
    }
}

fn list(names: &[String]) -> String {
    names.join(", ")
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The fleet's CA: its certificate and the key that signs the others.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    pub issued: Issued,
}

impl FleetCa {
    /// A new CA valid for `days`; its name carries a random suffix so two
    /// fleets' CAs never look alike in an error message or a trust store.
    pub fn new(days: u32) -> Result<FleetCa, CertError> {
        let key = generate_key("the CA key")?;
        let mut params = base_params(days)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("gpufleet CA {:08x}", rand::random::<u32>()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: "the CA certificate".into(),
                source,
            })?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(FleetCa {
            issuer: Issuer::new(params, key),
            issued,
        })
    }
}

/// The coordinator's server certificate for `names` (DNS names or IPs).
pub fn issue_coordinator(ca: &FleetCa, names: &[String], days: u32) -> Result<Issued, CertError> {
    let mut params = base_params(days)?;
    params.distinguished_name = common_name("gpufleet coordinator");
    for name in names {
        params.subject_alt_names.push(host_san(name)?);
    }
    params
        .subject_alt_names
        .push(uri_san(ROLE_COORDINATOR_URI.to_string())?);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign(ca, params, "the coordinator certificate")
}

/// An agent's client certificate, bound to `node`.
pub fn issue_agent(ca: &FleetCa, node: &str, days: u32) -> Result<Issued, CertError> {
    check_agent_name(node)?;
    let mut params = base_params(days)?;
    params.distinguished_name = common_name(node);
    params.subject_alt_names = vec![
        uri_san(format!("{NODE_URI_PREFIX}{node}"))?,
        uri_san(ROLE_AGENT_URI.to_string())?,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca, params, &format!("the certificate of agent `{node}`"))
}

/// What `gpufleet tls init` was asked for.
#[derive(Debug, Clone)]
pub struct InitPlan {
    pub out: PathBuf,
    /// Empty: [`DEFAULT_COORDINATOR_NAMES`].
    pub coordinator_names: Vec<String>,
    pub agents: Vec<String>,
    pub days: u32,
    pub force: bool,
}

/// Writes the CA, the coordinator's and each agent's certificate and key
/// into `plan.out`; returns the paths written. Everything is generated and
/// checked before the first file is touched, so a refusal leaves no debris.
pub fn init(plan: &InitPlan) -> Result<Vec<PathBuf>, CertError> {
    if !(1..=MAX_DAYS).contains(&plan.days) {
        return Err(CertError::BadDays(plan.days));
    }
    let mut seen = std::collections::HashSet::new();
    for agent in &plan.agents {
        check_agent_name(agent)?;
        if matches!(agent.as_str(), "ca" | "coordinator") {
            return Err(CertError::ReservedAgentName(agent.clone()));
        }
        if !seen.insert(agent.as_str()) {
            return Err(CertError::DuplicateAgent(agent.clone()));
        }
    }
    let names: Vec<String> = if plan.coordinator_names.is_empty() {
        DEFAULT_COORDINATOR_NAMES.map(str::to_string).to_vec()
    } else {
        plan.coordinator_names.clone()
    };

    let mut files: Vec<(String, Issued)> = Vec::new();
    let ca = FleetCa::new(plan.days)?;
    files.push(("ca".into(), ca.issued.clone()));
    files.push((
        "coordinator".into(),
        issue_coordinator(&ca, &names, plan.days)?,
    ));
    for agent in &plan.agents {
        files.push((agent.clone(), issue_agent(&ca, agent, plan.days)?));
    }

    let targets: Vec<(PathBuf, &str, u32)> = files
        .iter()
        .flat_map(|(stem, issued)| {
            [
                (
                    plan.out.join(format!("{stem}.pem")),
                    issued.cert_pem.as_str(),
                    0o644,
                ),
                (
                    plan.out.join(format!("{stem}-key.pem")),
                    issued.key_pem.as_str(),
                    0o600,
                ),
            ]
        })
        .collect();
    if !plan.force {
        let existing: Vec<String> = targets
            .iter()
            .filter(|(p, _, _)| p.symlink_metadata().is_ok())
            .filter_map(|(p, _, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if !existing.is_empty() {
            return Err(CertError::WouldOverwrite(existing, plan.out.clone()));
        }
    }
    std::fs::create_dir_all(&plan.out).map_err(|source| CertError::Write {
        path: plan.out.clone(),
        source,
    })?;
    for (path, text, mode) in &targets {
        write_new(path, text, *mode).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(targets.into_iter().map(|(p, _, _)| p).collect())
}

/// Creates `path` with `mode` from the start, so a key is never readable by
/// others even for an instant; a file being replaced (`--force`) is removed
/// first, since opening it would keep its old mode.
fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits away from a certificate; put them back.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn check_agent_name(name: &str) -> Result<(), CertError> {
    if crate::config::agent::is_valid_node_name(name) {
        Ok(())
    } else {
        Err(CertError::BadAgentName(name.to_string()))
    }
}

fn base_params(days: u32) -> Result<CertificateParams, CertError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(CertError::BadDays(days));
    }
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn host_san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |why: String| CertError::BadCoordinatorName {
        name: name.to_string(),
        why,
    };
    // Checked the way the agents will check it, so a name that can never
    // match is refused now rather than at the first handshake.
    rustls::pki_types::DnsName::try_from(name)
        .map_err(|e| bad(format!("{e}; e.g. coord.example.net or 10.0.0.5")))?;
    Ok(SanType::DnsName(
        name.try_into().map_err(|e| bad(format!("{e}")))?,
    ))
}

fn uri_san(uri: String) -> Result<SanType, CertError> {
    let what = uri.clone();
    Ok(SanType::URI(uri.try_into().map_err(|source| {
        CertError::Generate {
            what: format!("the SAN URI {what}"),
            source,
        }
    })?))
}

fn generate_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate().map_err(|source| CertError::Generate {
        what: what.to_string(),
        source,
    })
}

fn sign(ca: &FleetCa, params: CertificateParams, what: &str) -> Result<Issued, CertError> {
    let key = generate_key(&format!("the key of {what}"))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertError::Generate {
            what: what.to_string(),
            source,
        })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path, agents: &[&str]) -> InitPlan {
        InitPlan {
            out: dir.to_path_buf(),
            coordinator_names: vec![],
            agents: agents.iter().map(|a| a.to_string()).collect(),
            days: 30,
            force: false,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_every_file_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(&plan(dir.path(), &["gpu-1", "gpu-2"])).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "coordinator.pem",
                "coordinator-key.pem",
                "gpu-1.pem",
                "gpu-1-key.pem",
                "gpu-2.pem",
                "gpu-2-key.pem"
            ]
        );
        for p in &written {
            let want = if p.to_string_lossy().ends_with("-key.pem") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode(p), want, "{}", p.display());
        }
    }

    #[test]
    fn init_refuses_to_overwrite_and_force_replaces() {
        let dir = tempfile::tempdir().unwrap();
        init(&plan(dir.path(), &["gpu-1"])).unwrap();
        let before = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let e = init(&plan(dir.path(), &["gpu-1"])).unwrap_err().to_string();
        assert!(e.contains("ca.pem, ca-key.pem"), "{e}");
        assert!(e.contains("pass --force"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            before
        );

        std::fs::set_permissions(
            dir.path().join("gpu-1-key.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let forced = InitPlan {
            force: true,
            ..plan(dir.path(), &["gpu-1"])
        };
        init(&forced).unwrap();
        assert_ne!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            before
        );
        assert_eq!(mode(&dir.path().join("gpu-1-key.pem")), 0o600);
    }

    #[test]
    fn init_refuses_bad_requests_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        let e = init(&plan(&out, &["gpu 1"])).unwrap_err().to_string();
        assert!(e.contains("agent name `gpu 1` is invalid"), "{e}");
        let e = init(&plan(&out, &["ca"])).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = init(&plan(&out, &["a", "a"])).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = init(&InitPlan {
            coordinator_names: vec!["not a host".into()],
            ..plan(&out, &[])
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("coordinator name `not a host`"), "{e}");
        let e = init(&InitPlan {
            days: 0,
            ..plan(&out, &[])
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--days 0"), "{e}");
        assert!(!out.exists(), "nothing may be written on a refusal");
    }
}
