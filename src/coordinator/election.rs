//! Leader election among coordinators sharing one etcd prefix, built from a
//! lease, a txn and a watch (not etcd's Election API, which can report a win
//! after the caller's lease expired):
//!
//! - each coordinator holds a lease (TTL 5 s, renewed every 1 s) and a
//!   `members/<name>` key on it;
//! - it wins by creating the `leader` key, on its lease, only if absent; the
//!   key's create revision is the **epoch**;
//! - it steps down when a renewal is not acknowledged within the TTL minus a
//!   margin, when the key is gone or is another's, or when a store write
//!   finds its epoch stale; the control loop stops before it competes again;
//! - on shutdown it revokes the lease, so a follower takes over at once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::etcd::{self, Etcd, EtcdError, TxnRequest};

use super::store::etcd::{Fence, Keys};

/// A coordinator as the others see it (the value of its member key and,
/// while it leads, of the leader key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Its gRPC URL (agents and the CLI).
    pub address: String,
    /// Its HTTP URL (`/healthz`, `/metrics`).
    pub http: String,
}

/// This coordinator's part in the fleet, as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It runs the control loop under `epoch`.
    Leader { epoch: i64 },
    /// Another does.
    Follower { leader: Member, epoch: i64 },
    /// Nobody leads right now (an election, or etcd is unreachable).
    NoLeader,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader { .. } => "leader",
            Role::Follower { .. } => "follower",
            Role::NoLeader => "no-leader",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ElectionSettings {
    pub ttl: Duration,
    pub keepalive: Duration,
}

impl Default for ElectionSettings {
    fn default() -> Self {
        ElectionSettings {
            ttl: Duration::from_secs(5),
            keepalive: Duration::from_millis(1000),
        }
    }
}

impl ElectionSettings {
    /// A leader whose last acknowledged renewal is older than this steps
    /// down: the lease may expire any moment after.
    fn deadline(&self) -> Duration {
        self.ttl
            .saturating_sub(Duration::from_secs(1).max(self.keepalive / 2))
    }
}

/// What the election asks of the coordinator.
pub trait Term: Send {
    /// Start leading under `epoch`; returns when the fleet task runs.
    fn lead(&mut self, epoch: i64) -> impl std::future::Future<Output = ()> + Send;
    /// Stop leading: returns once the control loop has stopped.
    fn resign(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// One coordinator's place in the election.
pub struct Candidate {
    pub etcd: Etcd,
    pub keys: Keys,
    pub me: Member,
    pub settings: ElectionSettings,
    /// The epoch its store writes under.
    pub fence: Arc<Fence>,
    /// Follows its part.
    pub role: watch::Sender<Role>,
}

/// Runs the election until `shutdown` resolves; then resigns and revokes
/// the lease.
pub async fn run(
    candidate: Candidate,
    mut term: impl Term,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Candidate {
        etcd,
        keys,
        me,
        settings,
        fence,
        role,
    } = candidate;
    tokio::pin!(shutdown);
    let mut lease: Option<i64> = None;
    loop {
        let round = campaign(
            &etcd, &keys, &me, &settings, &fence, &role, &mut term, &mut lease,
        );
        tokio::select! {
            _ = &mut shutdown => break,
            why = round => {
                tracing::warn!(coordinator = %me.name, "{why}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if matches!(*role.borrow(), Role::Leader { .. }) {
        term.resign().await;
    }
    fence.hold(0);
    if let Some(id) = lease {
        // The leader key goes with the lease: a follower wins at once.
        match tokio::time::timeout(Duration::from_secs(1), etcd.lease_revoke(id)).await {
            Ok(Ok(())) => {
                tracing::info!(coordinator = %me.name, "lease revoked; leadership handed off")
            }
            Ok(Err(e)) => tracing::warn!("lease not revoked: {e}"),
            Err(_) => tracing::warn!("lease not revoked within 1 s"),
        }
    }
    role.send_replace(Role::NoLeader);
}

/// One round: get a lease, compete, lead or follow until something fails;
/// returns why the round ended, with the control loop stopped.
#[allow(clippy::too_many_arguments)]
async fn campaign(
    etcd: &Etcd,
    keys: &Keys,
    me: &Member,
    settings: &ElectionSettings,
    fence: &Fence,
    role: &watch::Sender<Role>,
    term: &mut impl Term,
    lease_slot: &mut Option<i64>,
) -> String {
    let lease = match etcd.lease_grant(settings.ttl.as_secs().max(1) as i64).await {
        Ok(id) => id,
        Err(e) => {
            role.send_replace(Role::NoLeader);
            return format!("no lease from etcd: {e}");
        }
    };
    *lease_slot = Some(lease);
    let value = serde_json::to_vec(me).unwrap_or_default();
    let member_key = format!("{}{}", keys.members(), me.name).into_bytes();
    if let Err(e) = etcd.put(&member_key, &value, lease).await {
        role.send_replace(Role::NoLeader);
        return format!("cannot register as a member: {e}");
    }
    let mut keepalive = etcd.keep_alive(lease);
    let mut acked = Instant::now();
    let leader_key = keys.leader().into_bytes();
    loop {
        // Create the leader key on our lease only if nobody holds it.
        let attempt = etcd
            .txn(TxnRequest {
                compare: vec![etcd::absent(&leader_key)],
                success: vec![etcd::put_op(leader_key.clone(), value.clone(), lease)],
                failure: vec![etcd::get_op(leader_key.clone())],
            })
            .await;
        let resp = match attempt {
            Ok(r) => r,
            Err(e) => {
                role.send_replace(Role::NoLeader);
                return format!("election: {e}");
            }
        };
        if resp.succeeded {
            let epoch = etcd::revision(&resp);
            fence.hold(epoch);
            fence.renewed((acked + settings.deadline()).into_std());
            tracing::info!(coordinator = %me.name, epoch, "elected leader");
            // Nobody is told this coordinator leads until its control loop
            // serves: a CLI that asked who leads would otherwise reach it
            // while it loads the state and be refused.
            role.send_replace(Role::NoLeader);
            // The lease is renewed while the state loads: a load longer
            // than the deadline must not end the term it starts.
            let lost = {
                let loading = term.lead(epoch);
                tokio::pin!(loading);
                tokio::select! {
                    () = &mut loading => None,
                    why = renew_every_tick(&mut keepalive, &mut acked, settings, fence) => {
                        // Lost while loading: let the load finish, then stop.
                        loading.await;
                        Some(why)
                    }
                }
            };
            let why = match lost {
                Some(why) => why,
                None => {
                    role.send_replace(Role::Leader { epoch });
                    lead(
                        etcd,
                        &leader_key,
                        epoch,
                        settings,
                        fence,
                        &mut keepalive,
                        &mut acked,
                    )
                    .await
                }
            };
            fence.hold(0);
            role.send_replace(Role::NoLeader);
            term.resign().await;
            tracing::warn!(coordinator = %me.name, epoch, "stepped down: {why}");
            // A new lease: the old one may be the reason.
            let _ = etcd.lease_revoke(lease).await;
            return format!("leadership of epoch {epoch} ended ({why})");
        }
        let Some(current) = etcd::got(&resp, 0).pop() else {
            continue; // deleted between the compare and the read
        };
        if current.lease == lease {
            // Our own key from before (a round that failed to notice it):
            // give it up and compete afresh.
            let _ = etcd.lease_revoke(lease).await;
            return "found a leader key of our own; starting over".into();
        }
        match serde_json::from_slice::<Member>(&current.value) {
            // Our own name on another lease: this coordinator's previous
            // run, dead (a restart after kill -9); nobody leads until its
            // lease runs out.
            Ok(leader) if leader.name == me.name => {
                role.send_replace(Role::NoLeader);
            }
            Ok(leader) => {
                if !matches!(&*role.borrow(), Role::Follower { leader: l, epoch } if *l == leader && *epoch == current.create_revision)
                {
                    tracing::info!(coordinator = %me.name, leader = %leader.name, epoch = current.create_revision, "following");
                }
                role.send_replace(Role::Follower {
                    leader,
                    epoch: current.create_revision,
                });
            }
            Err(e) => {
                tracing::warn!("the leader key does not parse ({e}); waiting for it to change");
                role.send_replace(Role::NoLeader);
            }
        }
        // Follow until the key changes, renewing our lease meanwhile.
        if let Err(why) = follow(
            etcd,
            &leader_key,
            current.mod_revision,
            settings,
            &mut keepalive,
            &mut acked,
        )
        .await
        {
            role.send_replace(Role::NoLeader);
            return why;
        }
    }
}

/// Renews the lease; Err when it is lost or unacknowledged past the deadline.
async fn renew(
    keepalive: &mut etcd::KeepAlive,
    acked: &mut Instant,
    settings: &ElectionSettings,
) -> Result<(), String> {
    let mut failures = 0u32;
    loop {
        match keepalive.renew().await {
            Ok(ttl) if ttl > 0 => {
                if failures > 0 {
                    tracing::info!(
                        "lease renewed again after {failures} failed attempts, {:?} since the last renewal",
                        acked.elapsed()
                    );
                }
                *acked = Instant::now();
                return Ok(());
            }
            Ok(_) => return Err("the lease expired".into()),
            Err(e) if acked.elapsed() >= settings.deadline() => {
                return Err(format!(
                    "the lease was not renewed for {:?} ({e})",
                    acked.elapsed()
                ))
            }
            // Again soon (every endpoint is asked afresh), not a renewal
            // interval later: an etcd member lost must not eat the
            // deadline. Callers bound this by the deadline.
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("lease renewal failed, retrying until the deadline: {e}");
                } else {
                    tracing::debug!("lease renewal failed, retrying: {e}");
                }
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

/// Pause between renewal attempts after a failed one.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// Renews once, bounded by the deadline; the fence learns the new one.
async fn renew_in_time(
    keepalive: &mut etcd::KeepAlive,
    acked: &mut Instant,
    settings: &ElectionSettings,
    fence: &Fence,
) -> Result<(), String> {
    let deadline = *acked + settings.deadline();
    match tokio::time::timeout_at(deadline, renew(keepalive, acked, settings)).await {
        Ok(Ok(())) => {
            fence.renewed((*acked + settings.deadline()).into_std());
            Ok(())
        }
        Ok(Err(why)) => Err(why),
        Err(_) => Err(late(acked)),
    }
}

fn late(acked: &Instant) -> String {
    format!("no lease renewal acknowledged for {:?}", acked.elapsed())
}

/// Renews every keep-alive period; returns why once a renewal fails past
/// the deadline. Safe to drop at any point.
async fn renew_every_tick(
    keepalive: &mut etcd::KeepAlive,
    acked: &mut Instant,
    settings: &ElectionSettings,
    fence: &Fence,
) -> String {
    let mut tick = tokio::time::interval(settings.keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(why) = renew_in_time(keepalive, acked, settings, fence).await {
            return why;
        }
    }
}

/// While leading: renew, and check the leader key is still ours. Returns why
/// leadership ended.
async fn lead(
    etcd: &Etcd,
    leader_key: &[u8],
    epoch: i64,
    settings: &ElectionSettings,
    fence: &Fence,
    keepalive: &mut etcd::KeepAlive,
    acked: &mut Instant,
) -> String {
    let mut tick = tokio::time::interval(settings.keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changed = Box::pin(watch_key(etcd, leader_key, epoch));
    loop {
        let deadline = *acked + settings.deadline();
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => return late(acked),
            _ = fence.lost() => return "a store write found the epoch stale".into(),
            _ = &mut changed => changed = Box::pin(watch_key(etcd, leader_key, epoch)),
        }
        // The renewal and the key check each wait on etcd up to a call
        // timeout: the deadline, not those, says when to step down.
        if let Err(why) = renew_in_time(keepalive, acked, settings, fence).await {
            return why;
        }
        match tokio::time::timeout_at(*acked + settings.deadline(), etcd.get(leader_key)).await {
            Ok(Ok(Some(kv))) if kv.create_revision == epoch => {}
            Ok(Ok(_)) => return "the leader key is gone or another's".into(),
            Ok(Err(EtcdError::Unreachable { .. })) => {} // the deadline decides
            Ok(Err(e)) => tracing::debug!("leader key check failed: {e}"),
            Err(_) => return late(acked),
        }
        if fence.epoch() != epoch {
            return "a store write found the epoch stale".into();
        }
    }
}

/// Resolves when `key` changes after `revision`; a watch that fails (etcd
/// away) resolves a little later, so callers re-check without spinning.
async fn watch_key(etcd: &Etcd, key: &[u8], revision: i64) {
    if let Err(e) = etcd.wait_for_change(key, revision).await {
        tracing::debug!("watch of the leader key ended: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// While following: renew, and return when the leader key changes.
async fn follow(
    etcd: &Etcd,
    leader_key: &[u8],
    revision: i64,
    settings: &ElectionSettings,
    keepalive: &mut etcd::KeepAlive,
    acked: &mut Instant,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(settings.keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let changed = watch_key(etcd, leader_key, revision);
    tokio::pin!(changed);
    loop {
        tokio::select! {
            _ = tick.tick() => renew(keepalive, acked, settings).await?,
            _ = &mut changed => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::server::LocalEtcd;
    use std::sync::Mutex;

    /// (coordinator, "lead" or "resign", epoch), in order.
    type Log = Arc<Mutex<Vec<(String, &'static str, i64)>>>;

    /// Records every lead/resign with the coordinator's name, so a test can
    /// check that no two terms overlap.
    #[derive(Clone)]
    struct Ledger {
        name: String,
        log: Log,
        epoch: i64,
        /// How long starting a term takes (the state's load).
        load: Duration,
    }

    impl Term for Ledger {
        async fn lead(&mut self, epoch: i64) {
            tokio::time::sleep(self.load).await;
            self.epoch = epoch;
            self.log
                .lock()
                .unwrap()
                .push((self.name.clone(), "lead", epoch));
        }
        async fn resign(&mut self) {
            self.log
                .lock()
                .unwrap()
                .push((self.name.clone(), "resign", self.epoch));
        }
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            address: format!("http://{name}:7460"),
            http: format!("http://{name}:7461"),
        }
    }

    fn fast() -> ElectionSettings {
        ElectionSettings {
            ttl: Duration::from_secs(2),
            keepalive: Duration::from_millis(500),
        }
    }

    struct Contender {
        role: watch::Receiver<Role>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        fence: Arc<Fence>,
    }

    fn candidate(etcd: &LocalEtcd, prefix: &str, name: &str, log: &Log) -> Contender {
        loading(etcd, prefix, name, log, Duration::ZERO)
    }

    /// A candidate whose term takes `load` to start.
    fn loading(etcd: &LocalEtcd, prefix: &str, name: &str, log: &Log, load: Duration) -> Contender {
        let client = Etcd::new(&etcd.settings()).unwrap();
        let (role_tx, role) = watch::channel(Role::NoLeader);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fence = Arc::new(Fence::default());
        let task = tokio::spawn(run(
            Candidate {
                etcd: client,
                keys: Keys::new(prefix),
                me: member(name),
                settings: fast(),
                fence: fence.clone(),
                role: role_tx,
            },
            Ledger {
                name: name.into(),
                log: log.clone(),
                epoch: 0,
                load,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        Contender {
            role,
            stop: Some(stop),
            task,
            fence,
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn leaders(cs: &[&Contender]) -> Vec<i64> {
        cs.iter()
            .filter_map(|c| match *c.role.borrow() {
                Role::Leader { epoch } => Some(epoch),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_longer_than_the_deadline_keeps_the_term_it_starts() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        // A 2 s lease steps down 1 s after the last renewal; the load
        // takes three times that.
        let a = loading(&etcd, "/e0", "a", &log, Duration::from_secs(3));
        until("a leader", || leaders(&[&a]).len() == 1).await;
        let epoch = leaders(&[&a])[0];
        assert!(a.fence.in_term());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(leaders(&[&a]), vec![epoch]);
        assert_eq!(*log.lock().unwrap(), vec![("a".to_string(), "lead", epoch)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_then_a_hand_off_when_it_stops() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a = candidate(&etcd, "/e1", "a", &log);
        let b = candidate(&etcd, "/e1", "b", &log);
        until("a leader", || leaders(&[&a, &b]).len() == 1).await;
        let first = leaders(&[&a, &b])[0];
        let a_leads = matches!(*a.role.borrow(), Role::Leader { .. });
        assert!(a_leads || matches!(*b.role.borrow(), Role::Leader { .. }));
        // Stop whichever leads; the other takes over with a higher epoch.
        let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
        let _ = leader.stop.take().unwrap().send(());
        leader.task.await.unwrap();
        until(
            "the follower to lead",
            || matches!(*follower.role.borrow(), Role::Leader { epoch } if epoch > first),
        )
        .await;
        assert_eq!(follower.fence.epoch(), leaders(&[&follower])[0]);
        a = follower;
        let _ = a.stop.take().unwrap().send(());
        a.task.await.unwrap();
        assert!(etcd.keys("/e1/").is_empty(), "revoked leases leave no keys");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_cut_from_etcd_steps_down_within_its_ttl() {
        let Some(mut etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let a = candidate(&etcd, "/e2", "a", &log);
        until("a leader", || leaders(&[&a]).len() == 1).await;
        etcd.stop();
        until("a to step down", || *a.role.borrow() == Role::NoLeader).await;
        assert_eq!(a.fence.epoch(), 0, "its store writes are refused");
        let entries = log.lock().unwrap().clone();
        assert_eq!(entries.last().map(|e| e.1), Some("resign"), "{entries:?}");
        etcd.restart().unwrap();
        until("a to lead again", || leaders(&[&a]).len() == 1).await;
        a.task.abort();
    }

    /// A term that writes as fast as it can while it leads, fenced as the
    /// store fences: each write holds only while its epoch is the leader
    /// key's. Records (epoch, commit revision) of every write that landed.
    #[derive(Clone)]
    struct Writer {
        etcd: Etcd,
        acts: Arc<Mutex<Vec<(i64, i64, String)>>>,
        name: String,
        task: Option<Arc<tokio::task::JoinHandle<()>>>,
    }

    impl Term for Writer {
        async fn lead(&mut self, epoch: i64) {
            let (etcd, acts, name) = (self.etcd.clone(), self.acts.clone(), self.name.clone());
            self.task = Some(Arc::new(tokio::spawn(async move {
                loop {
                    let req = TxnRequest {
                        compare: vec![etcd::created_at(b"/e3/leader", epoch)],
                        success: vec![etcd::put_op(
                            b"/e3/acts".to_vec(),
                            name.clone().into_bytes(),
                            0,
                        )],
                        failure: vec![],
                    };
                    if let Ok(r) = etcd.txn(req).await {
                        if r.succeeded {
                            acts.lock()
                                .unwrap()
                                .push((epoch, etcd::revision(&r), name.clone()));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })));
        }
        async fn resign(&mut self) {
            if let Some(t) = self.task.take() {
                t.abort();
            }
        }
    }

    /// Leaders are deposed at random (their key deleted, a write finding
    /// the epoch stale, a candidate stopped): every write that lands, in
    /// commit order, belongs to a non-decreasing epoch, and each epoch to
    /// one coordinator. No two coordinators act in one epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_two_coordinators_act_in_one_epoch() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let acts = Arc::new(Mutex::new(Vec::new()));
        let mut cs = Vec::new();
        for name in ["a", "b", "c"] {
            let client = Etcd::new(&etcd.settings()).unwrap();
            let (role_tx, role) = watch::channel(Role::NoLeader);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let fence = Arc::new(Fence::default());
            let writer = Writer {
                etcd: client.clone(),
                acts: acts.clone(),
                name: name.into(),
                task: None,
            };
            let task = tokio::spawn(run(
                Candidate {
                    etcd: client,
                    keys: Keys::new("/e3"),
                    me: member(name),
                    settings: fast(),
                    fence: fence.clone(),
                    role: role_tx,
                },
                writer,
                async move {
                    let _ = stopped.await;
                },
            ));
            cs.push(Contender {
                role,
                stop: Some(stop),
                task,
                fence,
            });
        }
        let mut rng: u64 = rand::random();
        println!("seed {rng}");
        let mut seen = Vec::new();
        for _ in 0..6 {
            let refs: Vec<&Contender> = cs.iter().collect();
            until("a leader", || leaders(&refs).len() == 1).await;
            let epoch = leaders(&refs)[0];
            seen.push(epoch);
            tokio::time::sleep(Duration::from_millis(100)).await;
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = refs
                .iter()
                .position(|c| matches!(*c.role.borrow(), Role::Leader { .. }))
                .unwrap();
            match (rng >> 33) % 3 {
                0 => etcd.delete("/e3/leader"),
                1 => {
                    cs[at].fence.lose();
                }
                _ if cs.len() > 1 => {
                    let mut c = cs.remove(at);
                    let _ = c.stop.take().unwrap().send(());
                    c.task.await.unwrap();
                }
                _ => etcd.delete("/e3/leader"),
            }
            let refs: Vec<&Contender> = cs.iter().collect();
            until("a new epoch", || {
                leaders(&refs).first().is_some_and(|e| *e > epoch)
            })
            .await;
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "epochs only grow: {seen:?}"
        );
        let mut landed = acts.lock().unwrap().clone();
        assert!(landed.len() > 10, "the leaders wrote: {landed:?}");
        landed.sort_by_key(|a| a.1);
        for w in landed.windows(2) {
            assert!(
                w[0].0 <= w[1].0,
                "a write of epoch {} landed after one of epoch {}",
                w[1].0,
                w[0].0
            );
        }
        let mut owner = std::collections::BTreeMap::new();
        for (epoch, _, name) in &landed {
            assert_eq!(
                owner.entry(*epoch).or_insert(name),
                &name,
                "epoch {epoch} had two writers"
            );
        }
        for c in cs {
            c.task.abort();
        }
    }
}
