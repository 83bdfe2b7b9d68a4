//! The fleet's vocabulary: GPUs, hosts, replicas and warm entries as every role
//! sees them. Wire types convert to and from these at the edge (`crate::wire`).

pub mod event;
pub mod gpu;
pub mod host;
pub mod replica;
pub mod routes;
pub mod session;
pub mod warm;

pub use event::EventKind;
pub use gpu::{GpuDetail, GpuInfo, GpuProcess, GpuSample, WindowStats};
pub use host::{HostInfo, HostSample};
pub use replica::{
    replicas_moved, valid_replica_id, MetricsPort, ReplicaSpec, ReplicaState, ReplicaStatus,
    ServingSignals,
};
pub use routes::{GatewayReport, ModelDemand, ModelRoutes, RouteTarget, RoutingTable};
pub use session::{Assignment, Hello, LogQuery, LogSlice, LogsReply, LogsRequest, Report, ToAgent};
pub use warm::{fills_ended, turned_final, warm_states_changed, WarmSpec, WarmStatus};

/// Milliseconds since the Unix epoch, for display and history only: every
/// timeout and window uses the monotonic clock.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
