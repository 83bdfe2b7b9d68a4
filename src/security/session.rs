//! Who may open an agent session: over TLS, only a verified agent
//! certificate, and only for the node it names. Plain TCP (no `[tls]`) lets
//! anyone in; the coordinator warns about that at start.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

use super::identity::CertIdentity;

/// What the transport proved about the far end of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPeer {
    /// Plain TCP: nothing proven.
    Plain,
    /// TLS with a verified agent certificate for this node.
    Agent { node: String },
}

/// Reads the peer of a session request. Over TLS, a request without a
/// client certificate, or with one that is not an agent's, is refused here,
/// before the Hello is read.
pub fn session_peer<T>(request: &Request<T>) -> Result<SessionPeer, Status> {
    let Some(tls) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(SessionPeer::Plain);
    };
    let address = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let Some(cert) = tls.peer_certs().and_then(|c| c.first().cloned()) else {
        tracing::warn!(%address, "refused an agent session without a client certificate");
        return Err(Status::unauthenticated(
            "agent sessions need a client certificate from the fleet CA; set [tls] cert and key in the agent config",
        ));
    };
    let identity = CertIdentity::read(&cert).map_err(|e| refuse(&address, e.to_string()))?;
    match identity.agent_node() {
        Ok(node) => Ok(SessionPeer::Agent {
            node: node.to_string(),
        }),
        Err(e) => Err(refuse(&address, e.to_string())),
    }
}

fn refuse(address: &str, why: String) -> Status {
    tracing::warn!(%address, "refused an agent session: {why}");
    Status::permission_denied(why)
}

/// Checks that the Hello's node name is the one the certificate names.
pub fn authorize_session(
    peer: &SessionPeer,
    hello_node: &str,
    address: &str,
) -> Result<(), Status> {
    match peer {
        SessionPeer::Plain => Ok(()),
        SessionPeer::Agent { node } if node == hello_node => Ok(()),
        SessionPeer::Agent { node } => Err(refuse(
            address,
            format!(
                "the client certificate is for node `{node}` but the Hello says `{hello_node}`; an agent may only speak for the node its certificate names"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sessions_are_not_checked() {
        assert!(authorize_session(&SessionPeer::Plain, "anything", "a").is_ok());
        assert_eq!(session_peer(&Request::new(())).unwrap(), SessionPeer::Plain);
    }

    #[test]
    fn agent_may_only_speak_for_its_own_node() {
        let peer = SessionPeer::Agent {
            node: "gpu-1".into(),
        };
        assert!(authorize_session(&peer, "gpu-1", "a").is_ok());
        let s = authorize_session(&peer, "gpu-2", "a").unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(
            s.message().starts_with(
                "the client certificate is for node `gpu-1` but the Hello says `gpu-2`"
            ),
            "{}",
            s.message()
        );
    }
}
