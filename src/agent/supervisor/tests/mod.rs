//! The supervisor against real processes: `sh` scripts and `sleep` as model
//! servers, in-test listeners for readiness, backoff shortened to ~100 ms.

mod adopt;
mod lifecycle;
mod policy;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use super::process::{self, group_members};
pub use super::record::{self, ReplicaRecord};
pub use super::*;
pub use crate::domain::{ReplicaSpec, ReplicaState, ReplicaStatus};

/// Each test gets its own block of ports, so parallel tests never race for
/// the port a replica was given.
pub fn port_block() -> RangeInclusive<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 41000 + (std::process::id() % 100) as u16 * 200;
    let start = base + NEXT.fetch_add(20, Ordering::Relaxed);
    start..=start + 19
}

pub fn config(state_dir: &Path) -> SupervisorConfig {
    SupervisorConfig {
        port_range: port_block(),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(2),
        // The servers run as whoever runs the tests, root in CI containers.
        allow_root_replicas: true,
        ..SupervisorConfig::new(state_dir)
    }
}

pub fn spec(id: &str, command: &[&str]) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_string(),
        model: "m".to_string(),
        spec_hash: "h1".to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        gpus: vec![0],
        ready_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

pub fn of<'a>(all: &'a [ReplicaStatus], id: &str) -> Option<&'a ReplicaStatus> {
    all.iter().find(|s| s.id == id)
}

/// Waits until `pred` holds for the published statuses; panics with the last
/// ones seen after `secs`.
pub async fn until(
    rx: &mut watch::Receiver<Vec<ReplicaStatus>>,
    secs: u64,
    pred: impl Fn(&[ReplicaStatus]) -> bool,
) -> Vec<ReplicaStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = rx.borrow_and_update().clone();
        if pred(&now) {
            return now;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("condition not met within {secs}s; statuses: {now:#?}");
        }
    }
}

pub fn alive(pid: u32) -> bool {
    process::proc_stat(pid).is_ok_and(|s| s.state != 'Z')
}

/// A just-spawned process shows its new argv a moment after exec returns.
pub async fn settled_cmdline(pid: u32) -> Vec<String> {
    for _ in 0..100 {
        let argv = process::cmdline(pid).unwrap_or_default();
        if !argv.is_empty() {
            return argv;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Vec::new()
}

/// A stand-in for a model server's port: accepts connections, answers HTTP
/// requests with `statuses` in turn (the last one repeated).
pub async fn serve(port: u16, statuses: Vec<&'static str>) -> tokio::task::JoinHandle<usize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let status = statuses[served.min(statuses.len() - 1)];
            served += 1;
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                if n > 0 {
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            }
        }
        served
    })
}
