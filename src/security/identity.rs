//! Who a fleet certificate speaks for: its role (coordinator or agent) and,
//! for an agent, the node it is bound to. Both travel as SAN URIs, which
//! every X.509 tool shows and no public CA would ever issue.

use x509_parser::extensions::GeneralName;

/// SAN URI that marks the coordinator's certificate; agents refuse a server without it.
pub const ROLE_COORDINATOR_URI: &str = "urn:gpufleet:role:coordinator";
/// SAN URI that marks an agent's client certificate.
pub const ROLE_AGENT_URI: &str = "urn:gpufleet:role:agent";
/// Prefix of the SAN URI that binds an agent certificate to its node name.
pub const NODE_URI_PREFIX: &str = "urn:gpufleet:node:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Agent,
}

/// What a certificate says about its holder, as far as the fleet cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    pub roles: Vec<Role>,
    /// Every `urn:gpufleet:node:` name it carries (tls init writes exactly one).
    pub nodes: Vec<String>,
    pub common_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed as X.509: {0}")]
    Unparsable(String),
    #[error("certificate is not a coordinator certificate ({found}); the coordinator's certificate must carry {ROLE_COORDINATOR_URI} (made by `gpufleet tls init`)")]
    NotCoordinator { found: String },
    #[error("a certificate with the coordinator role cannot open an agent session; agents need their own certificate from `gpufleet tls init --agents NAME`")]
    CoordinatorAsAgent,
    #[error("certificate is not an agent certificate ({found}); agent sessions need a certificate carrying {ROLE_AGENT_URI} and one {NODE_URI_PREFIX}NAME")]
    NotAgent { found: String },
}

impl CertIdentity {
    /// Reads the role and node URIs of a DER certificate.
    pub fn read(der: &[u8]) -> Result<CertIdentity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let mut id = CertIdentity {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            ..CertIdentity::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            match *uri {
                ROLE_COORDINATOR_URI => id.roles.push(Role::Coordinator),
                ROLE_AGENT_URI => id.roles.push(Role::Agent),
                other => {
                    if let Some(node) = other.strip_prefix(NODE_URI_PREFIX) {
                        id.nodes.push(node.to_string());
                    }
                }
            }
        }
        Ok(id)
    }

    /// "role agent, node `gpu-1`": for messages that say what was found instead.
    pub fn describe(&self) -> String {
        let roles: Vec<&str> = self
            .roles
            .iter()
            .map(|r| match r {
                Role::Coordinator => "coordinator",
                Role::Agent => "agent",
            })
            .collect();
        let mut out = if roles.is_empty() {
            "it has no gpufleet role".to_string()
        } else {
            format!("it has role {}", roles.join(" and "))
        };
        if !self.nodes.is_empty() {
            let nodes: Vec<String> = self.nodes.iter().map(|n| format!("`{n}`")).collect();
            out.push_str(&format!(", node {}", nodes.join(", ")));
        }
        if let Some(cn) = &self.common_name {
            out.push_str(&format!(", CN `{cn}`"));
        }
        out
    }

    /// Passes only a coordinator certificate: the coordinator role and no agent role.
    pub fn require_coordinator(&self) -> Result<(), IdentityError> {
        if self.roles.contains(&Role::Coordinator) && !self.roles.contains(&Role::Agent) {
            Ok(())
        } else {
            Err(IdentityError::NotCoordinator {
                found: self.describe(),
            })
        }
    }

    /// The node an agent certificate is bound to. A certificate that also
    /// claims the coordinator role, or names no node or several, is refused.
    pub fn agent_node(&self) -> Result<&str, IdentityError> {
        if self.roles.contains(&Role::Coordinator) {
            return Err(IdentityError::CoordinatorAsAgent);
        }
        match (self.roles.contains(&Role::Agent), self.nodes.as_slice()) {
            (true, [node]) => Ok(node),
            _ => Err(IdentityError::NotAgent {
                found: self.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::certs::{issue_agent, issue_coordinator, FleetCa};

    fn fleet() -> FleetCa {
        FleetCa::new(30).unwrap()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn agent_certificate_is_bound_to_its_node_and_is_no_coordinator() {
        let ca = fleet();
        let agent = issue_agent(&ca, "gpu-07", 30).unwrap();
        let id = CertIdentity::read(&der_of(&agent.cert_pem)).unwrap();
        assert_eq!(id.agent_node().unwrap(), "gpu-07");
        assert_eq!(id.common_name.as_deref(), Some("gpu-07"));
        let e = id.require_coordinator().unwrap_err().to_string();
        assert!(
            e.starts_with(
                "certificate is not a coordinator certificate (it has role agent, node `gpu-07`"
            ),
            "{e}"
        );
    }

    #[test]
    fn coordinator_certificate_cannot_open_an_agent_session() {
        let ca = fleet();
        let coord = issue_coordinator(&ca, &["localhost".into()], 30).unwrap();
        let id = CertIdentity::read(&der_of(&coord.cert_pem)).unwrap();
        id.require_coordinator().unwrap();
        assert_eq!(id.agent_node(), Err(IdentityError::CoordinatorAsAgent));
    }

    #[test]
    fn certificate_without_roles_is_neither() {
        let id = CertIdentity::default();
        assert!(matches!(
            id.require_coordinator(),
            Err(IdentityError::NotCoordinator { .. })
        ));
        let e = id.agent_node().unwrap_err().to_string();
        assert!(e.contains("it has no gpufleet role"), "{e}");
    }

    #[test]
    fn certificate_claiming_two_nodes_or_both_roles_is_refused() {
        let two = CertIdentity {
            roles: vec![Role::Agent],
            nodes: vec!["a".into(), "b".into()],
            common_name: None,
        };
        assert!(matches!(
            two.agent_node(),
            Err(IdentityError::NotAgent { .. })
        ));
        let both = CertIdentity {
            roles: vec![Role::Coordinator, Role::Agent],
            nodes: vec!["a".into()],
            common_name: None,
        };
        assert!(both.require_coordinator().is_err());
        assert!(both.agent_node().is_err());
    }

    #[test]
    fn garbage_is_unparsable() {
        assert!(matches!(
            CertIdentity::read(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
