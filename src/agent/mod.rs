//! The per-host daemon: measures GPUs and the host, supervises model servers,
//! keeps weights warm, and holds the session with the coordinator.

pub mod gpu;
pub mod host;
pub mod http;
pub mod link;
pub mod scrape;
pub mod supervisor;
pub mod warm;
