//! Fleet security: the private CA and certificates (`gpufleet tls init`),
//! mTLS between agents and the coordinator with roles bound into the
//! certificates, and bearer tokens for the Control API.

pub mod certs;
pub mod control;
pub mod identity;
pub mod session;
pub mod tls;
pub mod tokens;

pub use control::{BearerToken, ControlAuth, ControlGuard};
pub use session::{authorize_session, session_peer, SessionPeer};
pub use tls::{ClientTls, TlsError};

/// "a: b: c" from an error and its sources, without repeats.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
