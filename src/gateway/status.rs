//! What one gateway holds and sends, per model and per replica: its
//! `/status`, which `gpufleet gateway status` prints.

use serde::{Deserialize, Serialize};

use super::dispatch::ModelSnapshot;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub coordinator: String,
    pub connected: bool,
    pub models: Vec<ModelSnapshot>,
}
