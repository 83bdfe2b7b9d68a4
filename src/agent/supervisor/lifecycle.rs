//! The watch over one running server process: polls readiness until it is
//! ready or `ready_timeout` passes, notices its exit (pidfd), and performs the
//! stop sequence (SIGTERM to the group, grace period, SIGKILL to the group).
//! It only reports to the supervising task; it owns no replica state.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant, MissedTickBehavior};

use super::process::{self, ExitHow};
use super::readiness::ReadinessProbe;

/// How often readiness is polled while a server is starting.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often the group is checked for leftover processes while stopping.
const GROUP_POLL: Duration = Duration::from_millis(50);
/// How long SIGKILL is given to empty the group; a process stuck in the GPU
/// driver (state D) can outlast it, and is reported rather than waited on forever.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the watch tells the supervising task, tagged with the launch epoch so
/// reports about an earlier process of the same replica are ignored.
#[derive(Debug)]
pub struct Report {
    pub id: String,
    pub epoch: u64,
    pub event: Event,
}

#[derive(Debug)]
pub enum Event {
    /// The readiness probe passed.
    Ready,
    /// The process is gone and its group is empty.
    Ended(End),
    /// The backoff delay before the next start has passed.
    RestartDue,
}

#[derive(Debug)]
pub enum End {
    /// It exited on its own.
    Exited(ExitHow),
    /// It was stopped on request; `killed` when SIGTERM was not enough.
    Stopped { killed: bool },
    /// It was not ready within `ready_timeout` and was stopped.
    NotReady {
        timeout: Duration,
        last_probe: String,
    },
}

/// One process to watch.
pub struct Watched {
    pub id: String,
    pub epoch: u64,
    pub pid: u32,
    pub start_time: u64,
    pub probe: ReadinessProbe,
    /// Already ready (re-adopted after an agent restart): no probing.
    pub ready: bool,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
}

/// Starts the watch. Sending on (or dropping) `stop` decides the end: a sent
/// `()` stops the server; a dropped sender means the supervisor is detaching
/// and the watch ends without touching the server.
pub fn watch(
    w: Watched,
    reports: mpsc::UnboundedSender<Report>,
    stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (id, epoch) = (w.id.clone(), w.epoch);
        if let Some(end) = run(w, &reports, stop).await {
            let _ = reports.send(Report {
                id,
                epoch,
                event: Event::Ended(end),
            });
        }
    })
}

async fn run(
    w: Watched,
    reports: &mpsc::UnboundedSender<Report>,
    mut stop: oneshot::Receiver<()>,
) -> Option<End> {
    let mut exit = Box::pin(process::wait_exit(w.pid, w.start_time));
    let deadline = Instant::now() + w.ready_timeout;
    let mut ready = w.ready;
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_probe = String::from("no probe answered yet");
    loop {
        tokio::select! {
            how = &mut exit => {
                kill_leftovers(w.pid);
                return Some(End::Exited(how));
            }
            asked = &mut stop => {
                if asked.is_err() {
                    return None;
                }
                let killed = stop_group(w.pid, &mut exit, w.stop_timeout).await;
                return Some(End::Stopped { killed });
            }
            _ = ticks.tick(), if !ready => {
                match w.probe.check().await {
                    Ok(()) => {
                        ready = true;
                        let _ = reports.send(Report { id: w.id.clone(), epoch: w.epoch, event: Event::Ready });
                    }
                    Err(e) => last_probe = e,
                }
            }
            _ = sleep_until(deadline), if !ready => {
                stop_group(w.pid, &mut exit, w.stop_timeout).await;
                return Some(End::NotReady { timeout: w.ready_timeout, last_probe });
            }
        }
    }
}

/// A server that died may leave workers behind (tensor-parallel ranks,
/// tokenizer pools) still holding GPU memory; they go with their leader.
fn kill_leftovers(pgid: u32) {
    if !process::group_members(pgid).is_empty() {
        if let Err(e) = process::signal_group(pgid, Signal::SIGKILL) {
            tracing::warn!(pgid, error = %e, "cannot kill leftover processes of a replica");
        }
    }
}

/// SIGTERM to the group, up to `grace` for the leader and every member to
/// exit, then SIGKILL to the group. Returns whether SIGKILL was needed.
async fn stop_group<F>(pgid: u32, exit: &mut std::pin::Pin<Box<F>>, grace: Duration) -> bool
where
    F: std::future::Future<Output = ExitHow>,
{
    if let Err(e) = process::signal_group(pgid, Signal::SIGTERM) {
        tracing::warn!(pgid, error = %e, "cannot send SIGTERM to a replica");
    }
    let deadline = Instant::now() + grace;
    let leader_gone = tokio::time::timeout_at(deadline, exit.as_mut())
        .await
        .is_ok();
    while Instant::now() < deadline && !process::group_members(pgid).is_empty() {
        sleep(GROUP_POLL).await;
    }
    let lingering = !leader_gone || !process::group_members(pgid).is_empty();
    if !lingering {
        return false;
    }
    if let Err(e) = process::signal_group(pgid, Signal::SIGKILL) {
        tracing::warn!(pgid, error = %e, "cannot send SIGKILL to a replica");
    }
    let kill_deadline = Instant::now() + KILL_WAIT;
    if !leader_gone
        && tokio::time::timeout_at(kill_deadline, exit.as_mut())
            .await
            .is_err()
    {
        tracing::warn!(pgid, "replica survived SIGKILL (stuck in the kernel?)");
    }
    while Instant::now() < kill_deadline && !process::group_members(pgid).is_empty() {
        sleep(GROUP_POLL).await;
    }
    true
}
