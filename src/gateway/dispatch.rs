//! Which replica a request goes to, and when: a replica takes requests only
//! while it has room (its `max_concurrency`); the rest wait in a bounded
//! per-model queue, first come first served, and the queue is served the
//! moment room appears (a request finishing, a replica turning ready).
//! Among replicas with room: least outstanding of two chosen at random,
//! each in turn, or by prompt prefix (the gateway's `routing`).
//!
//! The state is one plain struct behind a mutex held for a few map
//! operations, never across an await; the decisions take `now` and a random
//! source, so they are unit-tested without a clock or a network.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::domain::{ModelDemand, RoutingTable};

use super::prefix::{self, Candidate, PrefixChoice, PrefixIndex, Routing};

/// A replica that failed before answering is passed over for this long
/// (the coordinator drops a dead one from the table within about a second).
pub const FAILED_COOLDOWN: Duration = Duration::from_secs(2);

/// Arrivals are counted over this window for the reported rate.
const ARRIVAL_WINDOW: Duration = Duration::from_secs(1);

/// A replica's place in the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub id: String,
    pub node: String,
    pub address: String,
    /// Waiting + running at its last scrape (every client's).
    pub ongoing: f64,
}

/// What a request is granted: where to send it. Released through
/// [`Slot`]'s drop.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub replica: String,
    pub address: String,
    /// How the replica was chosen: "load", "round-robin", "prefix-hit" or
    /// "prefix-hash".
    pub how: &'static str,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
    prefix: Vec<u64>,
}

#[derive(Debug, Default)]
struct ModelState {
    /// Known to the coordinator (in the latest table).
    known: bool,
    /// When this gateway found it in a table after it was not in one
    /// (seconds since the Unix epoch): OpenAI's `created`.
    known_since: u64,
    max_concurrency: Option<u32>,
    desired: u32,
    pinned: Option<u32>,
    replicas: Vec<Replica>,
    /// Requests sent and not finished, by replica id (replicas that left
    /// the table keep their count until their requests end).
    in_flight: HashMap<String, u32>,
    failed_until: HashMap<String, Instant>,
    /// Prompt blocks sent to each replica, for prefix-aware routing.
    prefixes: HashMap<String, PrefixIndex>,
    /// Without a spec `max_concurrency`: each replica's own slot count as
    /// its engine told (`None`: it could not say; the default applies).
    /// A replica not here yet is being asked and takes nothing meanwhile.
    slots: HashMap<String, Option<u32>>,
    /// Replicas whose engine is being asked for its slots.
    asking: HashSet<String>,
    waiters: VecDeque<Waiter>,
    arrivals: VecDeque<Instant>,
    /// Where round-robin starts looking next (an index into `replicas`).
    next_turn: usize,
}

/// A replica whose engine should be asked how many requests it serves at
/// once (its model's spec does not say).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotsQuery {
    pub model: String,
    pub replica: String,
    pub address: String,
}

/// Why a request cannot even wait.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No table from the coordinator yet: the gateway cannot tell models apart.
    NoTable,
    /// The coordinator knows no such model.
    UnknownModel { known: Vec<String> },
    /// The model's queue is full.
    QueueFull { queued: usize, capacity: u32 },
}

/// The outcome of admitting a request.
#[derive(Debug)]
pub enum Admission {
    /// Send it now.
    Go(Grant),
    /// Wait: the grant arrives on `rx` (or the sender is dropped if the
    /// model disappears). `first` is set when this request found the model
    /// with no replica and nobody waiting: it should wake the model.
    Wait {
        id: u64,
        rx: oneshot::Receiver<Grant>,
        first: bool,
    },
    Refused(Refusal),
}

/// One model's state as `/status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSnapshot {
    pub model: String,
    pub queued: usize,
    pub in_flight: u32,
    pub arrivals_per_s: f64,
    pub desired_replicas: u32,
    pub max_concurrency: u32,
    pub replicas: Vec<ReplicaSnapshot>,
    /// When this gateway first saw the model (seconds since the Unix
    /// epoch), for `/v1/models`; not part of `/status`.
    #[serde(skip)]
    pub known_since: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaSnapshot {
    pub id: String,
    pub node: String,
    pub address: String,
    pub in_flight: u32,
    /// Requests it takes at once: the spec's `max_concurrency`, else its
    /// engine's slots, else the gateway's default.
    #[serde(default)]
    pub max_concurrency: u32,
    pub ongoing_scraped: f64,
}

/// Every model's replicas, in-flight counts and queue.
#[derive(Debug)]
pub struct Dispatcher {
    models: BTreeMap<String, ModelState>,
    has_table: bool,
    queue_capacity: u32,
    default_max: u32,
    routing: Routing,
    next_waiter: u64,
}

impl Dispatcher {
    pub fn new(queue_capacity: u32, default_max: u32, routing: Routing) -> Dispatcher {
        Dispatcher {
            models: BTreeMap::new(),
            has_table: false,
            queue_capacity,
            default_max,
            routing,
            next_waiter: 1,
        }
    }

    /// Takes the coordinator's latest table and serves queues that can now
    /// move. Waiters of a model that is gone are dropped (their requests see
    /// a closed channel). Returns the new replicas whose engines must be
    /// asked for their slot count ([`Dispatcher::learn_slots`]).
    pub fn apply_table(
        &mut self,
        table: &RoutingTable,
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) -> Vec<SlotsQuery> {
        let mut queries = Vec::new();
        self.has_table = true;
        for (name, state) in self.models.iter_mut() {
            if !table.models.contains_key(name) {
                state.known = false;
                state.replicas.clear();
                state.waiters.clear();
            }
        }
        for (name, routes) in &table.models {
            let state = self.models.entry(name.clone()).or_default();
            if !state.known {
                state.known_since = (crate::domain::unix_ms_now() / 1000).max(0) as u64;
            }
            state.known = true;
            state.max_concurrency = routes.max_concurrency;
            state.desired = routes.desired_replicas;
            state.pinned = routes.pinned_replicas;
            state.replicas = routes
                .replicas
                .iter()
                .map(|r| Replica {
                    id: r.id.clone(),
                    node: r.node.clone(),
                    address: r.address.clone(),
                    ongoing: r.ongoing,
                })
                .collect();
            let live: HashSet<&str> = state.replicas.iter().map(|r| r.id.as_str()).collect();
            state.prefixes.retain(|id, _| live.contains(id.as_str()));
            state.slots.retain(|id, _| live.contains(id.as_str()));
            state.asking.retain(|id| live.contains(id.as_str()));
            if state.max_concurrency.is_none() {
                for r in &state.replicas {
                    if !state.slots.contains_key(&r.id) && state.asking.insert(r.id.clone()) {
                        queries.push(SlotsQuery {
                            model: name.clone(),
                            replica: r.id.clone(),
                            address: r.address.clone(),
                        });
                    }
                }
            }
        }
        let names: Vec<String> = self.models.keys().cloned().collect();
        for name in names {
            self.serve_queue(&name, now, rng);
        }
        self.models
            .retain(|_, s| s.known || s.in_flight.values().any(|n| *n > 0));
        queries
    }

    /// What a replica's engine said of its slots (`None`: nothing usable);
    /// the replica takes requests from now on.
    pub fn learn_slots(
        &mut self,
        model: &str,
        replica: &str,
        slots: Option<u32>,
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) {
        let Some(state) = self.models.get_mut(model) else {
            return;
        };
        if !state.asking.remove(replica) {
            // It left the table meanwhile.
            return;
        }
        state.slots.insert(replica.to_string(), slots);
        self.serve_queue(model, now, rng);
    }

    /// Admits one request for `model` whose prompt has the block hashes
    /// `prefix` (empty: none, or prefix routing is off).
    pub fn admit(
        &mut self,
        model: &str,
        prefix: Vec<u64>,
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) -> Admission {
        if !self.has_table {
            return Admission::Refused(Refusal::NoTable);
        }
        let (capacity, default_max, routing) =
            (self.queue_capacity, self.default_max, self.routing);
        let state = match self.models.get_mut(model) {
            Some(state) if state.known => state,
            _ => {
                let known = self
                    .models
                    .iter()
                    .filter(|(_, s)| s.known)
                    .map(|(n, _)| n.clone())
                    .collect();
                return Admission::Refused(Refusal::UnknownModel { known });
            }
        };
        state.arrivals.push_back(now);
        prune_arrivals(&mut state.arrivals, now);
        if state.waiters.is_empty() {
            if let Some(grant) = state.pick(default_max, routing, &prefix, now, rng) {
                return Admission::Go(grant);
            }
        }
        if state.waiters.len() >= capacity as usize {
            return Admission::Refused(Refusal::QueueFull {
                queued: state.waiters.len(),
                capacity,
            });
        }
        let first = state.waiters.is_empty() && state.replicas.is_empty();
        let id = self.next_waiter;
        self.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(Waiter { id, tx, prefix });
        Admission::Wait { id, rx, first }
    }

    /// A waiter gave up (timeout, client gone): out of the queue, and a grant
    /// that reached it unread is released.
    pub fn abandon(
        &mut self,
        model: &str,
        id: u64,
        unread: Option<Grant>,
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) {
        if let Some(state) = self.models.get_mut(model) {
            state.waiters.retain(|w| w.id != id);
        }
        if let Some(grant) = unread {
            self.release(model, &grant.replica, now, rng);
        }
    }

    /// One request to `replica` ended; its room goes to the queue at once.
    pub fn release(
        &mut self,
        model: &str,
        replica: &str,
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) {
        if let Some(state) = self.models.get_mut(model) {
            if let Some(n) = state.in_flight.get_mut(replica) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.in_flight.remove(replica);
                }
            }
        }
        self.serve_queue(model, now, rng);
    }

    /// `replica` failed before answering: passed over for a while.
    pub fn mark_failed(&mut self, model: &str, replica: &str, now: Instant) {
        if let Some(state) = self.models.get_mut(model) {
            state
                .failed_until
                .insert(replica.to_string(), now + FAILED_COOLDOWN);
        }
    }

    /// When the first replica of `model` that is passed over after a
    /// failure may be tried again: waiters must serve the queue then, as no
    /// release or table change may come (a model with one replica).
    pub fn cooldown_end(&self, model: &str) -> Option<Instant> {
        let state = self.models.get(model)?;
        state
            .replicas
            .iter()
            .filter_map(|r| state.failed_until.get(&r.id))
            .min()
            .copied()
    }

    /// Grants waiting requests while a replica has room.
    pub fn serve_queue(&mut self, model: &str, now: Instant, rng: &mut impl FnMut(usize) -> usize) {
        let (default_max, routing) = (self.default_max, self.routing);
        let Some(state) = self.models.get_mut(model) else {
            return;
        };
        while let Some(front) = state.waiters.front() {
            let prefix = front.prefix.clone();
            let Some(grant) = state.pick(default_max, routing, &prefix, now, rng) else {
                break;
            };
            let mut grant = Some(grant);
            while let Some(w) = state.waiters.pop_front() {
                match w.tx.send(grant.take().expect("a grant is given once")) {
                    Ok(()) => break,
                    // The waiter is gone: the next one gets it.
                    Err(g) => grant = Some(g),
                }
            }
            if let Some(unused) = grant {
                state.unclaim(&unused.replica);
            }
        }
    }

    /// Per-model demand for the coordinator.
    pub fn demand(&mut self, now: Instant) -> BTreeMap<String, ModelDemand> {
        self.models
            .iter_mut()
            .filter(|(_, s)| s.known)
            .map(|(name, s)| {
                prune_arrivals(&mut s.arrivals, now);
                let d = ModelDemand {
                    queued: s.waiters.len() as u32,
                    in_flight: s.in_flight.values().sum(),
                    arrivals_per_s: s.arrivals.len() as f64 / ARRIVAL_WINDOW.as_secs_f64(),
                };
                (name.clone(), d)
            })
            .collect()
    }

    pub fn snapshot(&mut self, now: Instant) -> Vec<ModelSnapshot> {
        let default_max = self.default_max;
        self.models
            .iter_mut()
            .filter(|(_, s)| s.known)
            .map(|(name, s)| {
                prune_arrivals(&mut s.arrivals, now);
                let replicas: Vec<ReplicaSnapshot> = s
                    .replicas
                    .iter()
                    .map(|r| ReplicaSnapshot {
                        id: r.id.clone(),
                        node: r.node.clone(),
                        address: r.address.clone(),
                        in_flight: s.in_flight.get(&r.id).copied().unwrap_or(0),
                        max_concurrency: s.room_of(&r.id, default_max).unwrap_or(0),
                        ongoing_scraped: r.ongoing,
                    })
                    .collect();
                // Without a spec limit each replica takes what its engine
                // said: the model's figure is the largest of those, not the
                // default that none of them may use.
                let max_concurrency = s.max_concurrency.unwrap_or_else(|| {
                    replicas
                        .iter()
                        .map(|r| r.max_concurrency)
                        .max()
                        .filter(|m| *m > 0)
                        .unwrap_or(default_max)
                });
                ModelSnapshot {
                    model: name.clone(),
                    queued: s.waiters.len(),
                    in_flight: s.in_flight.values().sum(),
                    arrivals_per_s: s.arrivals.len() as f64 / ARRIVAL_WINDOW.as_secs_f64(),
                    desired_replicas: s.desired,
                    max_concurrency,
                    replicas,
                    known_since: s.known_since,
                }
            })
            .collect()
    }

    /// Whether the model is pinned (a gateway cannot wake it), for messages.
    pub fn pinned(&self, model: &str) -> Option<u32> {
        self.models.get(model).and_then(|s| s.pinned)
    }
}

impl ModelState {
    /// A replica with room, by the routing policy: the longest cached
    /// prefix or consistent hashing (prefix routing with a prompt), the next
    /// in turn (round-robin), else the least outstanding of two chosen at
    /// random (power of two choices).
    /// Claims a slot on it.
    fn pick(
        &mut self,
        default_max: u32,
        routing: Routing,
        prefix: &[u64],
        now: Instant,
        rng: &mut impl FnMut(usize) -> usize,
    ) -> Option<Grant> {
        self.failed_until.retain(|_, until| *until > now);
        let open: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| {
                let r = &self.replicas[i];
                self.room_of(&r.id, default_max)
                    .is_some_and(|max| self.in_flight.get(&r.id).copied().unwrap_or(0) < max)
                    && !self.failed_until.contains_key(&r.id)
            })
            .collect();
        if open.is_empty() {
            return None;
        }
        let by_prefix = match routing {
            Routing::Prefix { imbalance } if !prefix.is_empty() => {
                let candidates: Vec<Candidate<'_>> = open
                    .iter()
                    .map(|&i| {
                        let id = self.replicas[i].id.as_str();
                        Candidate {
                            id,
                            in_flight: self.in_flight.get(id).copied().unwrap_or(0),
                            matched: self.prefixes.get(id).map_or(0, |p| p.matched(prefix)),
                        }
                    })
                    .collect();
                prefix::choose(&candidates, prefix, imbalance).map(|(k, why)| {
                    let how = match why {
                        PrefixChoice::Hit => "prefix-hit",
                        PrefixChoice::Hashed => "prefix-hash",
                    };
                    (open[k], how)
                })
            }
            _ => None,
        };
        let (chosen, how) = match (by_prefix, open.len()) {
            (Some(choice), _) => choice,
            (None, _) if routing == Routing::RoundRobin => {
                // The first open replica at or after the turn, cyclically
                // (`open` is sorted and not empty).
                let turn = self.next_turn % self.replicas.len();
                let i = open.iter().copied().find(|&i| i >= turn).unwrap_or(open[0]);
                self.next_turn = i + 1;
                (i, "round-robin")
            }
            (None, 1) => (open[0], "load"),
            (None, n) => {
                let a = rng(n);
                let mut b = rng(n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| {
                    let r = &self.replicas[i];
                    (self.in_flight.get(&r.id).copied().unwrap_or(0), r.ongoing)
                };
                let (la, lb) = (load(open[a]), load(open[b]));
                let pick = if lb.0 < la.0 || (lb.0 == la.0 && lb.1 < la.1) {
                    open[b]
                } else {
                    open[a]
                };
                (pick, "load")
            }
        };
        let r = &self.replicas[chosen];
        match self.in_flight.get_mut(&r.id) {
            Some(n) => *n += 1,
            None => {
                self.in_flight.insert(r.id.clone(), 1);
            }
        }
        if matches!(routing, Routing::Prefix { .. }) && !prefix.is_empty() {
            self.prefixes
                .entry(r.id.clone())
                .or_default()
                .record(prefix);
        }
        Some(Grant {
            replica: r.id.clone(),
            address: r.address.clone(),
            how,
        })
    }

    /// Requests `replica` takes at once: the spec's, else its engine's
    /// slots, else the default; `None` while its engine is being asked.
    fn room_of(&self, replica: &str, default_max: u32) -> Option<u32> {
        if let Some(max) = self.max_concurrency {
            return Some(max);
        }
        match self.slots.get(replica) {
            Some(slots) => Some(slots.unwrap_or(default_max)),
            None if self.asking.contains(replica) => None,
            // Not asked (a table applied before this rule): the default.
            None => Some(default_max),
        }
    }

    fn unclaim(&mut self, replica: &str) {
        if let Some(n) = self.in_flight.get_mut(replica) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(replica);
            }
        }
    }
}

fn prune_arrivals(arrivals: &mut VecDeque<Instant>, now: Instant) {
    while arrivals
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > ARRIVAL_WINDOW)
    {
        arrivals.pop_front();
    }
}

/// The dispatcher shared by the request tasks and the coordinator link.
#[derive(Clone)]
pub struct SharedDispatcher {
    inner: Arc<Mutex<Dispatcher>>,
}

fn random_below(n: usize) -> usize {
    rand::random_range(0..n.max(1))
}

impl SharedDispatcher {
    pub fn new(d: Dispatcher) -> SharedDispatcher {
        SharedDispatcher {
            inner: Arc::new(Mutex::new(d)),
        }
    }

    /// A request task that panicked while holding the lock left only counts
    /// behind, which stay usable.
    fn lock(&self) -> MutexGuard<'_, Dispatcher> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn apply_table(&self, table: &RoutingTable) -> Vec<SlotsQuery> {
        self.lock()
            .apply_table(table, Instant::now(), &mut random_below)
    }

    pub fn learn_slots(&self, model: &str, replica: &str, slots: Option<u32>) {
        self.lock()
            .learn_slots(model, replica, slots, Instant::now(), &mut random_below);
    }

    pub fn admit(&self, model: &str, prefix: Vec<u64>) -> Admission {
        self.lock()
            .admit(model, prefix, Instant::now(), &mut random_below)
    }

    pub fn demand(&self) -> BTreeMap<String, ModelDemand> {
        self.lock().demand(Instant::now())
    }

    pub fn snapshot(&self) -> Vec<ModelSnapshot> {
        self.lock().snapshot(Instant::now())
    }

    pub fn pinned(&self, model: &str) -> Option<u32> {
        self.lock().pinned(model)
    }

    /// Whether a routing table has arrived since the start.
    pub fn has_table(&self) -> bool {
        self.lock().has_table
    }

    pub fn mark_failed(&self, model: &str, replica: &str) {
        self.lock().mark_failed(model, replica, Instant::now());
    }

    pub fn cooldown_end(&self, model: &str) -> Option<Instant> {
        self.lock().cooldown_end(model)
    }

    /// Serves `model`'s queue now (a failed replica's cooldown ended).
    pub fn serve_queue(&self, model: &str) {
        self.lock()
            .serve_queue(model, Instant::now(), &mut random_below);
    }

    /// Wraps a grant so that its slot is released however the request ends.
    pub fn slot(&self, model: &str, grant: Grant) -> Slot {
        Slot {
            dispatcher: self.clone(),
            model: model.to_string(),
            grant,
        }
    }

    /// Waits for a grant; gives up (and leaves the queue) when dropped.
    pub fn ticket(&self, model: &str, id: u64, rx: oneshot::Receiver<Grant>) -> Ticket {
        Ticket {
            dispatcher: self.clone(),
            model: model.to_string(),
            id,
            rx: Some(rx),
        }
    }
}

/// A request's claim on one replica slot, released on drop: a request that
/// ends in any way (done, failed, client gone, task cancelled) frees it.
pub struct Slot {
    dispatcher: SharedDispatcher,
    model: String,
    grant: Grant,
}

impl Slot {
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    pub fn model(&self) -> &str {
        &self.model
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.dispatcher.lock().release(
            &self.model,
            &self.grant.replica,
            Instant::now(),
            &mut random_below,
        );
    }
}

/// A place in a model's queue.
pub struct Ticket {
    dispatcher: SharedDispatcher,
    model: String,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Ticket {
    /// The grant, or `None` when the model went away while waiting.
    pub async fn granted(&mut self) -> Option<Slot> {
        let rx = self.rx.as_mut()?;
        let grant = rx.await.ok();
        self.rx = None;
        grant.map(|g| self.dispatcher.slot(&self.model, g))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // Under the lock no grant can be in flight: either the waiter is
        // still queued (removed now) or its grant already sits in `rx`.
        let mut d = self.dispatcher.lock();
        let unread = rx.try_recv().ok();
        d.abandon(
            &self.model,
            self.id,
            unread,
            Instant::now(),
            &mut random_below,
        );
    }
}

#[cfg(test)]
mod tests;
