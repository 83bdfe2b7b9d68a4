//! Fleet security: the private CA and certificates (`gpufleet tls init`),
//! mTLS between agents and the coordinator with roles bound into the
//! certificates, and bearer tokens for the Control API.

pub mod certs;
pub mod control;
pub mod env_policy;
pub mod identity;
pub mod session;
pub mod tls;
pub mod tokens;

pub use control::{BearerToken, ControlAuth, ControlGuard};
pub use session::{authorize_session, session_peer, SessionPeer};
pub use tls::{ClientTls, TlsError};

pub(crate) use crate::wire::error_chain;
