//! gpufleet: run model servers on bare-metal GPU fleets. One binary, three
//! roles: the per-host agent, the coordinator, and the operator CLI.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod domain;
pub mod etcd;
pub mod exposition;
pub mod gateway;
pub mod logging;
pub mod notify;
pub mod security;
pub mod sim;
pub mod wire;
