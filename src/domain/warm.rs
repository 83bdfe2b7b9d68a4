//! Warm cache entries: model weights kept resident in a host's page cache.

use serde::{Deserialize, Serialize};

/// The coordinator's wish: keep this model's weights warm on the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarmSpec {
    pub model: String,
    pub path: String,
    pub lock: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WarmStatus {
    pub model: String,
    pub path: String,
    pub resident_bytes: u64,
    pub total_bytes: u64,
    /// warming | resident | partial | evicting | failed
    pub state: String,
    pub rate_bytes_per_s: f64,
    pub eta_ms: u64,
    pub error: String,
    pub locked: bool,
}
