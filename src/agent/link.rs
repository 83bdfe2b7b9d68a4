//! The session with the coordinator: dial out, say Hello, report every
//! interval, and hand each Assignment to the agent. Reconnects forever with
//! capped, jittered backoff; while the coordinator is away the agent keeps
//! running what it has.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::domain::{
    replicas_moved, Assignment, GpuInfo, Hello, LogQuery, LogSlice, LogsReply, LogsRequest,
    ReplicaStatus, Report,
};
use crate::wire::pb;

/// Where the session's content comes from: the agent's live state.
pub trait Reporter: Send + Sync + 'static {
    fn hello(&self) -> Hello;
    fn report(&self) -> Report;
    /// The last `lines` lines of a replica's server log.
    fn logs(&self, replica_id: &str, query: LogQuery) -> Result<LogSlice, String>;
    /// The operator vouches for a GPU the health rules marked unhealthy.
    fn mark_gpu_healthy(&self, index: u32);
    /// Notified whenever `report` may say something new.
    fn updates(&self) -> std::sync::Arc<tokio::sync::Notify>;
}

/// Reports sent ahead of the interval (a load step, a replica's change of
/// state) are at least this far apart, so a burst of changes is one report.
const EARLY_REPORT_GAP: Duration = Duration::from_millis(100);

/// The sending side of a session: numbers reports and remembers what the
/// coordinator was last told.
struct Outbox {
    seq: u64,
    last_inventory: Vec<GpuInfo>,
    last_replicas: Vec<ReplicaStatus>,
    last_warm: Vec<crate::domain::WarmStatus>,
    last_sent: tokio::time::Instant,
    /// A report went out early: the next scrape is reported too, whatever
    /// it shows, so the coordinator learns whether the change held.
    confirm: bool,
}

/// Whether any replica in `after` comes from a newer scrape than in `before`.
fn rescraped(before: &[ReplicaStatus], after: &[ReplicaStatus]) -> bool {
    after.iter().any(|a| {
        before
            .iter()
            .find(|b| b.id == a.id)
            .is_some_and(|b| b.signals.scrape_seq != a.signals.scrape_seq)
    })
}

impl Outbox {
    /// Whether `report` should go out before the interval: news, or the
    /// scrape that confirms (or contradicts) the last news.
    fn early(&self, report: &Report) -> bool {
        replicas_moved(&self.last_replicas, &report.replicas)
            || self.confirm && rescraped(&self.last_replicas, &report.replicas)
            || crate::domain::warm_states_changed(&self.last_warm, &report.warm)
    }
    fn message(&mut self, mut report: Report, applied: u64) -> pb::AgentMessage {
        self.seq += 1;
        report.seq = self.seq;
        report.applied_generation = applied;
        // Inventory travels only when it changed (health, MIG).
        if report.inventory == self.last_inventory {
            report.inventory.clear();
        } else {
            self.last_inventory = report.inventory.clone();
        }
        if replicas_moved(&self.last_replicas, &report.replicas) {
            self.confirm = true;
        } else if rescraped(&self.last_replicas, &report.replicas) {
            // Whatever report carries the next scrape confirms the news.
            self.confirm = false;
        }
        self.last_replicas = report.replicas.clone();
        self.last_warm = report.warm.clone();
        self.last_sent = tokio::time::Instant::now();
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Report((&report).into())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// One coordinator, or several sharing an etcd store: sessions go to
    /// whichever leads (a follower names it when it refuses).
    pub coordinators: Vec<String>,
    pub node_name: String,
    pub report_interval: Duration,
    /// First reconnect delay; doubles up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// TLS to the coordinator (from `[tls]`); None: plain TCP.
    pub tls: Option<crate::security::ClientTls>,
}

/// Reconnect delay after `failures` consecutive failures: doubling from
/// `base` to `cap`, then jittered into [50%, 100%] so a restarted coordinator
/// is not hit by every agent at the same instant.
pub fn backoff(failures: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(20));
    let d = exp.min(cap);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Retry delay (jittered down to half) while the coordinators hold an
/// election.
const ELECTION_RETRY: Duration = Duration::from_secs(1);

/// A session must be open (the coordinator answered its Hello) within this;
/// a coordinator that accepts connections but does not answer (paused) is
/// then left for the next one.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a coordinator that stays unreachable is logged at warn level.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Runs the session until `shutdown` resolves. Assignments go to
/// `assignments`; `connected` says whether a session is open.
pub async fn run(
    cfg: LinkConfig,
    reporter: std::sync::Arc<dyn Reporter>,
    assignments: watch::Sender<Option<Assignment>>,
    connected: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut failures: u32 = 0;
    let mut last_warn: Option<Instant> = None;
    // A new reason (the coordinator came up but refuses us) is worth a warning at once.
    let mut warned: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut dial = Dial::new(&cfg.coordinators);
    let mut epochs = EpochGuard::default();
    loop {
        let started = Instant::now();
        let target = dial.target();
        let outcome = tokio::select! {
            _ = &mut shutdown => return,
            r = session(&cfg, &target, reporter.as_ref(), &assignments, &connected, &mut epochs) => r,
        };
        let _ = connected.send(false);
        // A session that lived a while was a success: start backoff afresh.
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        let (message, leader) = match outcome {
            Ok(()) => ("coordinator ended the session".to_string(), None),
            Err(Ended { message, leader }) => (message, leader),
        };
        // A coordinator that answers but does not lead (an election, or a
        // leader about to be replaced) is no failure to back off from: a
        // leader is seconds away.
        let electing = leader.is_some();
        if electing {
            failures = 0;
        }
        // A follower named the leader: dial it at once, without backoff
        // (once: a leader that turns out a follower too goes the slow way).
        if let Some(leader) = leader.as_ref().filter(|l| !l.is_empty() && **l != target) {
            if dial.redirect(leader.clone()) {
                tracing::info!(follower = %target, leader = %leader, "the coordinator is a follower; dialling the leader");
                continue;
            }
        }
        dial.advance();
        let delay = if electing {
            ELECTION_RETRY.mul_f64(0.5 + 0.5 * rand::random::<f64>())
        } else if dial.tried_all() {
            let d = backoff(failures, cfg.backoff_base, cfg.backoff_cap, rand::random());
            failures = failures.saturating_add(1);
            d
        } else {
            // The next coordinator of the list may lead: try it now.
            cfg.backoff_base / 4
        };
        let window_over = last_warn.is_none_or(|t| t.elapsed() >= UNREACHABLE_LOG_EVERY);
        if window_over {
            warned.clear();
        }
        if window_over || failures == 1 || !warned.contains(&message) {
            tracing::warn!(
                coordinator = %target,
                attempts = failures,
                retry_in = ?delay,
                "{message}; keeping replicas running and retrying"
            );
            last_warn = Some(Instant::now());
            warned.insert(message);
        } else {
            tracing::debug!(coordinator = %target, retry_in = ?delay, "{message}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Which coordinator the next session dials: the list in turn, or the
/// leader a follower named. (The gateway's link dials the same way.)
pub struct Dial {
    list: Vec<String>,
    at: usize,
    /// Dials since the list was last started over.
    since_start: usize,
    redirect: Option<String>,
}

impl Dial {
    pub fn new(list: &[String]) -> Dial {
        Dial {
            list: list.to_vec(),
            at: 0,
            since_start: 0,
            redirect: None,
        }
    }
    pub fn target(&self) -> String {
        self.redirect
            .clone()
            .unwrap_or_else(|| self.list[self.at % self.list.len()].clone())
    }
    /// Dial `leader` next, unless the target now is already a redirect.
    pub fn redirect(&mut self, leader: String) -> bool {
        if self.redirect.is_some() {
            return false;
        }
        self.redirect = Some(leader);
        true
    }
    /// The target failed: the next one of the list.
    pub fn advance(&mut self) {
        if self.redirect.take().is_none() {
            self.at = (self.at + 1) % self.list.len();
        }
        self.since_start += 1;
    }
    /// Every coordinator failed once since the last backoff: back off.
    pub fn tried_all(&mut self) -> bool {
        if self.since_start >= self.list.len() {
            self.since_start = 0;
            true
        } else {
            false
        }
    }
}

/// Why a session ended, and the leader when a follower named one.
#[derive(Debug)]
pub struct Ended {
    pub message: String,
    pub leader: Option<String>,
}

impl From<String> for Ended {
    fn from(message: String) -> Ended {
        Ended {
            message,
            leader: None,
        }
    }
}

/// The highest leader epoch seen: an assignment from a lower one comes from
/// a deposed leader (one that was paused past its lease) and is refused.
/// Epoch 0 is a lone coordinator on redb, which has no rival to fence.
#[derive(Debug, Default)]
struct EpochGuard {
    highest: u64,
}

impl EpochGuard {
    fn admit(&mut self, epoch: u64) -> Result<(), String> {
        if epoch != 0 && epoch < self.highest {
            return Err(format!(
                "refused an assignment of epoch {epoch}: a newer leader (epoch {}) has been seen, so its sender was deposed",
                self.highest
            ));
        }
        self.highest = self.highest.max(epoch);
        Ok(())
    }
}

async fn connect(cfg: &LinkConfig, coordinator: &str) -> Result<Channel, String> {
    let endpoint = crate::security::tls::endpoint(coordinator, cfg.tls.as_ref())
        .map_err(|e| format!("coordinator URL `{coordinator}` is invalid: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(crate::coordinator::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::coordinator::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    crate::security::tls::connect(endpoint, cfg.tls.as_ref())
        .await
        .map_err(|e| {
            format!(
                "cannot reach the coordinator at {coordinator}: {}",
                crate::wire::error_chain(&e)
            )
        })
}

/// One session, from connect to its end.
async fn session(
    cfg: &LinkConfig,
    coordinator: &str,
    reporter: &dyn Reporter,
    assignments: &watch::Sender<Option<Assignment>>,
    connected: &watch::Sender<bool>,
    epochs: &mut EpochGuard,
) -> Result<(), Ended> {
    let channel = connect(cfg, coordinator).await?;
    let mut client = pb::agent_session_client::AgentSessionClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(8);
    let hello = reporter.hello();
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello((&hello).into())),
    })
    .await
    .map_err(|_| Ended::from("session closed before Hello".to_string()))?;
    let response = tokio::time::timeout(
        SESSION_OPEN_TIMEOUT,
        client.session(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| {
        Ended::from(format!(
            "{coordinator} did not answer the session within {SESSION_OPEN_TIMEOUT:?}"
        ))
    })?
    .map_err(|s| Ended {
        leader: crate::wire::leader_of(&s),
        message: match std::error::Error::source(&s) {
            // A transport failure (a TLS alert: the coordinator did not accept our certificate) says why only in its sources.
            Some(cause) => format!(
                "coordinator refused the session: {}",
                crate::wire::error_chain(cause)
            ),
            None => format!("coordinator refused the session: {}", s.message()),
        },
    })?;
    let mut inbound = response.into_inner();
    let _ = connected.send(true);
    tracing::info!(coordinator = %coordinator, node = %cfg.node_name, "connected to the coordinator");

    let mut outbox = Outbox {
        seq: 0,
        last_inventory: hello.gpus.clone(),
        last_replicas: hello.replicas.clone(),
        last_warm: hello.warm.clone(),
        last_sent: tokio::time::Instant::now(),
        confirm: false,
    };
    let mut applied: u64 = assignments
        .borrow()
        .as_ref()
        .map(|a| a.generation)
        .unwrap_or(0);
    let updates = reporter.updates();
    // When a change is waiting out EARLY_REPORT_GAP.
    let mut early: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(cfg.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let report = tokio::select! {
            _ = ticker.tick() => Some(reporter.report()),
            _ = updates.notified() => {
                let report = reporter.report();
                if outbox.early(&report) {
                    let at = outbox.last_sent + EARLY_REPORT_GAP;
                    if tokio::time::Instant::now() >= at {
                        Some(report)
                    } else {
                        early = Some(early.map_or(at, |e| e.min(at)));
                        None
                    }
                } else {
                    None
                }
            }
            _ = tokio::time::sleep_until(early.unwrap_or_else(tokio::time::Instant::now)), if early.is_some() => {
                Some(reporter.report())
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::Assignment(a)) })) => {
                    let a = Assignment::from(a);
                    epochs.admit(a.epoch)?;
                    applied = a.generation;
                    tracing::debug!(generation = a.generation, replicas = a.replicas.len(), "assignment received");
                    let _ = assignments.send(Some(a));
                    None
                }
                Ok(Some(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::Logs(l)) })) => {
                    let l = LogsRequest::from(l);
                    let reply = match reporter.logs(&l.replica_id, l.query) {
                        Ok(slice) => LogsReply { request_id: l.request_id, slice, error: String::new() },
                        Err(error) => LogsReply { request_id: l.request_id, slice: LogSlice::default(), error },
                    };
                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Logs((&reply).into())) };
                    if tx.send(msg).await.is_err() {
                        return Err(String::from("the session's send side closed").into());
                    }
                    None
                }
                Ok(Some(pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::MarkGpuHealthy(m)) })) => {
                    tracing::info!(gpu = m.index, "GPU marked healthy by the operator");
                    reporter.mark_gpu_healthy(m.index);
                    None
                }
                Ok(Some(_)) => None,
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("session with {coordinator} broke: {}", s.message()).into()),
            }
        };
        if let Some(report) = report {
            early = None;
            let msg = outbox.message(report, applied);
            if tx.send(msg).await.is_err() {
                return Err(String::from("the session's send side closed").into());
            }
            // The next regular report is a full interval after this one.
            ticker.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(seq: u64, ongoing: f64) -> ReplicaStatus {
        ReplicaStatus {
            id: "r".into(),
            signals: crate::domain::ServingSignals {
                running: ongoing,
                fresh: true,
                scrape_seq: seq,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn report(seq: u64, ongoing: f64) -> Report {
        Report {
            replicas: vec![replica(seq, ongoing)],
            ..Default::default()
        }
    }

    #[test]
    fn news_goes_out_early_and_so_does_the_scrape_after_it() {
        let mut out = Outbox {
            seq: 0,
            last_inventory: Vec::new(),
            last_replicas: vec![replica(1, 1.0)],
            last_warm: Vec::new(),
            last_sent: tokio::time::Instant::now(),
            confirm: false,
        };
        // Jitter waits for the interval.
        assert!(!out.early(&report(2, 1.5)));
        // A load step goes at once...
        assert!(out.early(&report(3, 12.0)));
        out.message(report(3, 12.0), 0);
        // ...the same scrape composed again does not...
        assert!(!out.early(&report(3, 12.0)));
        // ...and the next scrape goes too, though it moved little.
        assert!(out.early(&report(4, 11.0)));
        out.message(report(4, 11.0), 0);
        // It confirmed the news: quiet again until the next.
        assert!(!out.early(&report(5, 11.5)));
    }

    #[test]
    fn an_assignment_from_a_deposed_leader_is_refused() {
        let mut g = EpochGuard::default();
        g.admit(0).unwrap();
        g.admit(7).unwrap();
        g.admit(7).unwrap();
        let e = g.admit(5).unwrap_err();
        assert!(e.contains("epoch 5") && e.contains("epoch 7"), "{e}");
        g.admit(9).unwrap();
        assert!(g.admit(7).is_err(), "the highest seen is kept");
    }

    #[test]
    fn the_list_is_dialled_in_turn_and_a_named_leader_at_once() {
        let list = vec!["http://a".to_string(), "http://b".into(), "http://c".into()];
        let mut d = Dial::new(&list);
        assert_eq!(d.target(), "http://a");
        d.advance();
        assert!(!d.tried_all());
        assert_eq!(d.target(), "http://b");
        assert!(d.redirect("http://c".into()));
        assert_eq!(d.target(), "http://c");
        assert!(
            !d.redirect("http://a".into()),
            "no ping-pong between followers"
        );
        // The leader failed too: back to the list where it was.
        d.advance();
        assert_eq!(d.target(), "http://b");
        assert!(!d.tried_all());
        d.advance();
        assert!(d.tried_all(), "three failures in a row: back off");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff(0, base, cap, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(10, base, cap, 1.0), cap);
        assert_eq!(backoff(1000, base, cap, 1.0), cap);
        assert_eq!(backoff(10, base, cap, 0.0), cap / 2);
    }
}
