//! Service notifications to systemd (the sd_notify datagram protocol): READY,
//! STATUS, STOPPING and watchdog pings. Every call is a no-op when the process
//! was not started by systemd with `Type=notify` (no `NOTIFY_SOCKET`).

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

/// A notification that cannot be delivered in this long is dropped: systemd
/// drains its socket at once, and a wedged manager must not stall the caller.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract socket name (@name)")]
    BadSocket(OsString),
    #[error("cannot send {state:?} to the systemd notify socket {socket}: {source}")]
    Send {
        socket: String,
        state: String,
        source: io::Error,
    },
    #[error("WATCHDOG_USEC {0:?} is not a whole number of microseconds")]
    BadWatchdogUsec(OsString),
}

/// Where systemd listens for this service's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    Path(PathBuf),
    /// A Linux abstract-namespace name, written `@name` in `NOTIFY_SOCKET`.
    Abstract(Vec<u8>),
}

impl NotifySocket {
    /// Parses the value of `NOTIFY_SOCKET`; unset or empty means "not under
    /// systemd" (`None`).
    pub fn parse(value: Option<&OsStr>) -> Result<Option<NotifySocket>, NotifyError> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'@') if bytes.len() > 1 => Ok(Some(NotifySocket::Abstract(bytes[1..].to_vec()))),
            Some(b'/') => Ok(Some(NotifySocket::Path(PathBuf::from(value)))),
            _ => Err(NotifyError::BadSocket(value.to_os_string())),
        }
    }

    /// Sends one notification (newline-separated `KEY=VALUE` assignments).
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let failed = |source: io::Error| NotifyError::Send {
            socket: self.to_string(),
            state: state.to_string(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(failed)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(failed)?;
        let sent = match self {
            NotifySocket::Path(path) => socket.send_to(state.as_bytes(), path),
            NotifySocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(failed)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
        };
        match sent {
            Ok(n) if n == state.len() => Ok(()),
            Ok(n) => Err(failed(io::Error::other(format!(
                "only {n} of {} bytes were sent",
                state.len()
            )))),
            Err(e) => Err(failed(e)),
        }
    }
}

impl std::fmt::Display for NotifySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifySocket::Path(p) => write!(f, "{}", p.display()),
            NotifySocket::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// The notify socket of this process, if systemd gave it one. A malformed
/// value is logged and treated as absent: a notification is never worth
/// failing the service for.
fn socket_from_env() -> Option<NotifySocket> {
    match NotifySocket::parse(std::env::var_os("NOTIFY_SOCKET").as_deref()) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring NOTIFY_SOCKET");
            None
        }
    }
}

fn notify(state: &str) {
    if let Some(socket) = socket_from_env() {
        if let Err(e) = socket.send(state) {
            tracing::warn!(error = %e, "systemd notification failed");
        }
    }
}

/// A status line is one assignment: a newline in it would start another one
/// (a status text could otherwise say `READY=1` or `MAINPID=`).
fn status_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", status_line(status))
}

fn status_message(status: &str) -> String {
    format!("STATUS={}", status_line(status))
}

const STOPPING_MESSAGE: &str = "STOPPING=1";
const WATCHDOG_MESSAGE: &str = "WATCHDOG=1";

/// Tells systemd the service is up (`Type=notify` units count as started
/// from here on), with a first status line.
pub fn ready(status: &str) {
    notify(&ready_message(status));
}

/// Replaces the status line `systemctl status` shows.
pub fn status(status: &str) {
    notify(&status_message(status));
}

/// Tells systemd the service is shutting down on purpose.
pub fn stopping() {
    notify(STOPPING_MESSAGE);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, the margin
/// sd_watchdog_enabled(3) recommends. `None` when there is no watchdog, or it
/// is meant for another process (`WATCHDOG_PID` names a different pid).
pub fn watchdog_period(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let micros: u64 = usec
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| NotifyError::BadWatchdogUsec(usec.to_os_string()))?;
    if micros == 0 {
        return Ok(None);
    }
    if let Some(pid) = pid.filter(|v| !v.is_empty()) {
        if pid.to_str().and_then(|s| s.parse::<u32>().ok()) != Some(own_pid) {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(micros) / 2))
}

/// A background notifier; dropping it stops it.
#[derive(Debug, Default)]
pub struct NotifyTask {
    handle: Option<JoinHandle<()>>,
}

impl NotifyTask {
    /// Whether a task runs at all (false when not under systemd).
    pub fn is_running(&self) -> bool {
        self.handle.is_some()
    }
}

impl Drop for NotifyTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Pings the systemd watchdog from a tokio task, at half the interval
/// systemd asked for. The pings prove the async runtime still schedules
/// tasks: a runtime whose workers are all stuck stops pinging, and systemd
/// restarts the service. A no-op without a watchdog. Call inside a runtime.
pub fn spawn_watchdog() -> NotifyTask {
    let Some(socket) = socket_from_env() else {
        return NotifyTask::default();
    };
    let period = match watchdog_period(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    ) {
        Ok(Some(period)) => period,
        Ok(None) => return NotifyTask::default(),
        Err(e) => {
            tracing::warn!(error = %e, "not pinging the systemd watchdog");
            return NotifyTask::default();
        }
    };
    tracing::debug!(?period, "pinging the systemd watchdog");
    NotifyTask {
        handle: Some(tokio::spawn(ping_watchdog(socket, period))),
    }
}

async fn ping_watchdog(socket: NotifySocket, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = socket.send(WATCHDOG_MESSAGE) {
            tracing::warn!(error = %e, "systemd watchdog ping failed");
        }
    }
}

/// Keeps the systemd status line current: every `every`, asks `describe`
/// for it and sends it when it changed (`None`: nothing to say this time).
/// A no-op without systemd. Call inside a runtime.
pub fn spawn_status<F, Fut>(every: Duration, describe: F) -> NotifyTask
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    match socket_from_env() {
        Some(socket) => NotifyTask {
            handle: Some(tokio::spawn(keep_status(socket, every, describe))),
        },
        None => NotifyTask::default(),
    }
}

async fn keep_status<F, Fut>(socket: NotifySocket, every: Duration, mut describe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(line) = describe().await else {
            continue;
        };
        if last.as_deref() == Some(line.as_str()) {
            continue;
        }
        match socket.send(&status_message(&line)) {
            Ok(()) => last = Some(line),
            Err(e) => tracing::warn!(error = %e, "systemd status update failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (tempfile::TempDir, UnixDatagram, NotifySocket) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, rx, NotifySocket::Path(path))
    }

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn parse_accepts_paths_and_abstract_names_and_rejects_the_rest() {
        assert_eq!(NotifySocket::parse(None).unwrap(), None);
        assert_eq!(NotifySocket::parse(Some(OsStr::new(""))).unwrap(), None);
        assert_eq!(
            NotifySocket::parse(Some(OsStr::new("/run/systemd/notify"))).unwrap(),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse(Some(OsStr::new("@sd-notify-1"))).unwrap(),
            Some(NotifySocket::Abstract(b"sd-notify-1".to_vec()))
        );
        for bad in ["relative/notify", "@"] {
            let err = NotifySocket::parse(Some(OsStr::new(bad))).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn ready_status_and_stopping_reach_a_path_socket() {
        let (_dir, rx, socket) = receiver();
        socket.send(&ready_message("4 GPUs, 0 replicas")).unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=4 GPUs, 0 replicas");
        socket.send(&status_message("3 nodes, 2 models")).unwrap();
        assert_eq!(recv(&rx), "STATUS=3 nodes, 2 models");
        socket.send(STOPPING_MESSAGE).unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn a_status_text_cannot_smuggle_another_assignment() {
        let (_dir, rx, socket) = receiver();
        socket
            .send(&status_message("ok\nREADY=1\rMAINPID=1"))
            .unwrap();
        let got = recv(&rx);
        assert_eq!(got.lines().count(), 1, "{got:?}");
        assert!(got.starts_with("STATUS=ok "), "{got:?}");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("gpufleet-notify-test-{}", rand::random::<u64>());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let value = format!("@{name}");
        let socket = NotifySocket::parse(Some(OsStr::new(&value)))
            .unwrap()
            .unwrap();
        socket.send(STOPPING_MESSAGE).unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn sending_to_a_missing_socket_says_which() {
        let socket = NotifySocket::Path("/nonexistent/gpufleet/notify".into());
        let err = socket.send(STOPPING_MESSAGE).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/gpufleet/notify"), "{err}");
    }

    #[test]
    fn watchdog_period_is_half_the_interval_and_only_for_this_process() {
        let us = |s: &str| Some(OsString::from(s));
        let period = |usec: Option<OsString>, pid: Option<OsString>| {
            watchdog_period(usec.as_deref(), pid.as_deref(), 4242)
        };
        assert_eq!(period(None, None).unwrap(), None);
        assert_eq!(period(us("0"), None).unwrap(), None);
        assert_eq!(
            period(us("30000000"), None).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            period(us("30000000"), us("4242")).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(period(us("30000000"), us("1")).unwrap(), None);
        let err = period(us("30s"), None).unwrap_err().to_string();
        assert!(err.contains("30s"), "{err}");
    }

    #[tokio::test]
    async fn the_watchdog_pings_every_period() {
        let (_dir, rx, socket) = receiver();
        let task = NotifyTask {
            handle: Some(tokio::spawn(ping_watchdog(
                socket,
                Duration::from_millis(20),
            ))),
        };
        let got =
            tokio::task::spawn_blocking(move || (0..3).map(|_| recv(&rx)).collect::<Vec<_>>())
                .await
                .unwrap();
        assert_eq!(got, vec!["WATCHDOG=1"; 3]);
        drop(task);
    }

    #[tokio::test]
    async fn the_status_is_sent_only_when_it_changes() {
        let (_dir, rx, socket) = receiver();
        let mut lines = vec![
            Some("1 node, 0 models"),
            Some("1 node, 0 models"),
            None,
            Some("1 node, 1 model"),
        ]
        .into_iter();
        let describe = move || {
            let next = lines.next().flatten().map(str::to_string);
            async move { next }
        };
        let _task = NotifyTask {
            handle: Some(tokio::spawn(keep_status(
                socket,
                Duration::from_millis(10),
                describe,
            ))),
        };
        let got = tokio::task::spawn_blocking(move || {
            let first = recv(&rx);
            let second = recv(&rx);
            // Nothing after the last change, though the task keeps ticking.
            rx.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 64];
            (first, second, rx.recv(&mut buf).is_err())
        })
        .await
        .unwrap();
        assert_eq!(got.0, "STATUS=1 node, 0 models");
        assert_eq!(got.1, "STATUS=1 node, 1 model");
        assert!(got.2, "an unchanged status was sent again");
    }
}
