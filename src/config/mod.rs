//! PROVISIONAL: replaced by the config branch.
pub mod agent;
pub mod coordinator;
pub mod model;
pub mod units;
pub use agent::*;
pub use coordinator::*;
pub use model::*;
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
