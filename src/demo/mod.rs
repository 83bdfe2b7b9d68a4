//! `gpufleet demo`: a whole local fleet on simulated GPUs, plus the demo model
//! server and load generator it uses.

pub mod arrivals;
pub mod endpoints;
pub mod latency;
pub mod load;
pub mod server;
pub mod weights;
