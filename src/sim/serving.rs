//! The simulated fleet and its serving model: nodes with whole GPUs and a page
//! cache, replicas that load (from storage or from cache) then serve up to
//! `concurrency` requests at once, and one FIFO queue per model that hands
//! each request to the least-loaded ready replica with a free slot, where it
//! joins a batch whose every request slows as the batch grows. Event times
//! live in a binary heap; per request the work is a queue push/pop, a
//! constant-time slot lookup, a push and pop on its replica's batch, and a
//! completion event rescheduled for each change of that batch.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use crate::coordinator::placement::{self, GpuCandidate, NodeCandidate, ReplicaNeeds};

use super::events::{Event, Events};
use super::report::{Metrics, Outcome};
use super::slots::FreeSlots;
use super::trace::Request;

/// How fast replicas serve and load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServingModel {
    /// Requests one replica serves at once (continuous batching).
    pub concurrency: u32,
    /// Prompt tokens per second, per request, alone on its replica.
    pub prefill_tps: f64,
    /// Generated tokens per second, per request, alone on its replica.
    pub decode_tps: f64,
    /// How much each further request in a replica's batch slows every
    /// request's per-token time: with `b` running, each progresses at
    /// 1 / (1 + slowdown × (b − 1)) of its speed alone. Below 1, so a larger
    /// batch still completes more work per second.
    pub batch_slowdown: f64,
    pub weights_bytes: u64,
    /// Shared storage → node, bytes per second (per node).
    pub storage_bw: f64,
    /// Page cache → GPU, bytes per second.
    pub cache_bw: f64,
    /// Engine start-up after the weights are read (CUDA graphs, KV cache).
    pub engine_init_s: f64,
}

impl ServingModel {
    /// Seconds one request occupies a slot alone on its replica: prefill
    /// then decode. In a batch of `b` it takes this / [`Self::speed`]`(b)`.
    pub fn service_s(&self, r: &Request) -> f64 {
        f64::from(r.context_tokens) / self.prefill_tps
            + f64::from(r.generated_tokens) / self.decode_tps
    }

    /// Seconds from placement to ready with `resident` bytes of the weights
    /// in the node's page cache: the rest comes from storage.
    pub fn load_s(&self, resident: f64) -> f64 {
        let w = self.weights_bytes as f64;
        let r = resident.clamp(0.0, w);
        r / self.cache_bw + (w - r) / self.storage_bw + self.engine_init_s
    }

    /// Each running request's speed, relative to alone, in a batch of `b`.
    pub fn speed(&self, batch: u32) -> f64 {
        1.0 / (1.0 + self.batch_slowdown * f64::from(batch.saturating_sub(1)))
    }

    /// Service seconds (alone) a full replica completes per second: the
    /// most any batch does, since b × speed(b) grows with b.
    pub fn peak_throughput(&self) -> f64 {
        f64::from(self.concurrency) * self.speed(self.concurrency)
    }

    /// The shortest placement-to-ready time a replica can have: whichever
    /// of all cached and nothing cached loads faster.
    pub fn min_start_s(&self) -> f64 {
        self.load_s(0.0).min(self.load_s(self.weights_bytes as f64))
    }

    /// Load time with nothing cached: the prediction horizon.
    pub fn cold_start_s(&self) -> f64 {
        self.load_s(0.0)
    }
}

/// Nodes × GPUs of the simulated fleet, all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetShape {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub gpu_memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining,
    Stopped,
}

#[derive(Debug, Clone)]
struct Replica {
    node: usize,
    gpus: Vec<u32>,
    state: State,
    running: u32,
    placed_s: f64,
    ready_s: f64,
    stopped_s: Option<f64>,
    /// The requests it serves, the first to finish on top.
    batch: BinaryHeap<InFlight>,
    /// Service seconds (alone) each running request has progressed since
    /// the replica was placed, brought up to `progress_at`: all running
    /// requests progress alike, so one number tracks them all.
    progress: f64,
    progress_at: f64,
    /// Bumped whenever the batch changes: a completion scheduled before is stale.
    generation: u32,
}

/// A request on a replica: done when the replica's progress reaches `done_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct InFlight {
    done_at: f64,
    arrival_s: f64,
    start_s: f64,
    first_token_s: f64,
}

impl Eq for InFlight {}

impl Ord for InFlight {
    /// Reversed: the std max-heap keeps the first to finish on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.done_at.total_cmp(&self.done_at)
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone)]
struct Node {
    taken: Vec<bool>,
    /// When the model's weights started filling this node's page cache at
    /// storage speed; they stay once resident (no eviction: one model's
    /// weights fit the cache budget).
    fill_start: Option<f64>,
    /// Live replicas here.
    replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    arrival_s: f64,
    service_s: f64,
    prefill_s: f64,
}

/// What a policy sees of the model each second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    pub queued: u32,
    /// Requests being served (on ready and draining replicas).
    pub running: u32,
    /// The part of `running` on ready replicas: what the coordinator's
    /// signals sum (a draining replica is no longer scraped for them).
    pub running_on_ready: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    pub arrivals_last_s: u32,
    /// Mean placement-to-ready time of the replicas that became ready in
    /// the last second, as the coordinator measures starts.
    pub started_s: Option<f64>,
    /// Busy share of the ready replicas' slots (the utilization proxy).
    pub busy_share: Option<f64>,
    /// p95 of completions over the last seconds.
    pub recent_p95_s: Option<f64>,
}

impl Load {
    /// Waiting + running: what the engines and the queue hold.
    pub fn ongoing(&self) -> f64 {
        f64::from(self.queued) + f64::from(self.running)
    }
}

/// One policy's simulated fleet and model.
pub struct Cluster {
    model: ServingModel,
    needs: ReplicaNeeds,
    names: Vec<String>,
    gpu_memory_bytes: u64,
    nodes: Vec<Node>,
    replicas: Vec<Replica>,
    /// Replicas not stopped, oldest first.
    live: Vec<usize>,
    /// Ready replicas with a free slot, by load.
    free: FreeSlots,
    /// Whether the policy reads the recent p95 (it costs a histogram per second).
    track_latency: bool,
    queue: VecDeque<Pending>,
    events: Events,
    ready: u32,
    starting: u32,
    draining: u32,
    running: u32,
    arrivals_this_s: u32,
    arrivals_last_s: u32,
    /// Placement-to-ready seconds summed, and starts, this and last second.
    starts_this_s: (f64, u32),
    starts_last_s: (f64, u32),
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub metrics: Metrics,
}

impl Cluster {
    pub fn new(
        shape: FleetShape,
        model: ServingModel,
        needs: ReplicaNeeds,
        metrics: Metrics,
    ) -> Self {
        let width = shape.nodes.to_string().len().max(2);
        Cluster {
            model,
            needs,
            names: (0..shape.nodes)
                .map(|i| format!("node-{i:0width$}"))
                .collect(),
            gpu_memory_bytes: shape.gpu_memory_bytes,
            nodes: (0..shape.nodes)
                .map(|_| Node {
                    taken: vec![false; shape.gpus_per_node as usize],
                    fill_start: None,
                    replicas: 0,
                })
                .collect(),
            replicas: Vec::new(),
            live: Vec::new(),
            free: FreeSlots::new(model.concurrency),
            track_latency: false,
            queue: VecDeque::new(),
            events: Events::default(),
            ready: 0,
            starting: 0,
            draining: 0,
            running: 0,
            arrivals_this_s: 0,
            arrivals_last_s: 0,
            starts_this_s: (0.0, 0),
            starts_last_s: (0.0, 0),
            cold_starts: 0,
            warm_starts: 0,
            metrics,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Keeps the p95 of recent completions for [`Load::recent_p95_s`].
    pub fn track_latency(&mut self, on: bool) {
        self.track_latency = on;
    }

    pub fn needs(&self) -> &ReplicaNeeds {
        &self.needs
    }

    fn resident(&self, node: usize, now: f64) -> f64 {
        let w = self.model.weights_bytes as f64;
        self.nodes[node]
            .fill_start
            .map_or(0.0, |s| ((now - s) * self.model.storage_bw).clamp(0.0, w))
    }

    /// Share of the weights resident on `node`.
    pub fn warm_fraction(&self, node: usize, now: f64) -> f64 {
        let w = self.model.weights_bytes as f64;
        if w <= 0.0 {
            return 1.0;
        }
        self.resident(node, now) / w
    }

    /// Whether any live replica runs on `node`.
    pub fn runs_on(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|n| n.replicas > 0)
    }

    /// The fleet as placement sees it. A cache-blind scheduler (the
    /// baselines') sees every node as cold.
    pub fn candidates(&self, now: f64, warm_aware: bool) -> Vec<NodeCandidate> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeCandidate {
                name: self.names[i].clone(),
                unschedulable: None,
                gpus: n
                    .taken
                    .iter()
                    .enumerate()
                    .map(|(g, taken)| GpuCandidate {
                        index: g as u32,
                        healthy: true,
                        taken: *taken,
                        free_bytes: self.gpu_memory_bytes,
                        mig: false,
                    })
                    .collect(),
                warm_fraction: if warm_aware {
                    self.warm_fraction(i, now)
                } else {
                    0.0
                },
                model_replicas: n.replicas,
            })
            .collect()
    }

    /// Node index of a candidate's name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Starts filling `node`'s page cache with the weights, if not already.
    pub fn warm(&mut self, node: usize, now: f64) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.fill_start.get_or_insert(now);
        }
    }

    /// Replicas that are starting, ready or draining (they hold GPUs).
    pub fn live_replicas(&self) -> u32 {
        self.live.len() as u32
    }

    /// Replicas that count toward the desired number (not draining).
    pub fn serving_replicas(&self) -> u32 {
        self.ready + self.starting
    }

    pub fn load(&self) -> Load {
        let slots = self.ready * self.model.concurrency;
        let on_ready: u32 = self
            .live
            .iter()
            .map(|r| &self.replicas[*r])
            .filter(|r| r.state == State::Ready)
            .map(|r| r.running)
            .sum();
        Load {
            queued: self.queue.len() as u32,
            running: self.running,
            running_on_ready: on_ready,
            ready: self.ready,
            starting: self.starting,
            draining: self.draining,
            arrivals_last_s: self.arrivals_last_s,
            started_s: (self.starts_last_s.1 > 0)
                .then(|| self.starts_last_s.0 / f64::from(self.starts_last_s.1)),
            busy_share: (slots > 0).then(|| f64::from(on_ready) / f64::from(slots)),
            recent_p95_s: if self.track_latency {
                self.metrics.recent.p95()
            } else {
                None
            },
        }
    }

    /// Replicas already running when the trace starts: ready at once, their
    /// nodes' caches full, counted as neither cold nor warm starts.
    pub fn preload(&mut self, n: u32, warm_aware: bool) -> Result<(), String> {
        for _ in 0..n {
            let p = placement::place(&self.candidates(0.0, warm_aware), &self.needs)?;
            let id = self.add_replica(&p.node, p.gpus, 0.0, State::Ready)?;
            let node = self.replicas[id].node;
            let w = self.model.weights_bytes as f64;
            self.nodes[node].fill_start = Some(-w / self.model.storage_bw);
            self.ready += 1;
            self.free.insert(id, 0);
        }
        Ok(())
    }

    fn add_replica(
        &mut self,
        node_name: &str,
        gpus: Vec<u32>,
        now: f64,
        state: State,
    ) -> Result<usize, String> {
        let node = self
            .node_index(node_name)
            .ok_or_else(|| format!("placement chose `{node_name}`, which is not in the fleet"))?;
        for g in &gpus {
            if let Some(t) = self.nodes[node].taken.get_mut(*g as usize) {
                *t = true;
            }
        }
        let id = self.replicas.len();
        self.replicas.push(Replica {
            node,
            gpus,
            state,
            running: 0,
            placed_s: now,
            ready_s: now,
            stopped_s: None,
            batch: BinaryHeap::new(),
            progress: 0.0,
            progress_at: now,
            generation: 0,
        });
        self.live.push(id);
        self.nodes[node].replicas += 1;
        Ok(id)
    }

    /// Brings the serving replicas to `desired`: places missing ones through
    /// the coordinator's placement, or removes surplus ones the way the
    /// coordinator does (not ready first, then the last to become ready).
    /// Returns the placement problem when the fleet is full.
    pub fn scale_to(&mut self, desired: u32, now: f64, warm_aware: bool) -> Option<String> {
        let mut current = self.serving_replicas();
        while current < desired {
            let cands = self.candidates(now, warm_aware);
            let p = match placement::place(&cands, &self.needs) {
                Ok(p) => p,
                Err(why) => return Some(why),
            };
            let id = match self.add_replica(&p.node, p.gpus, now, State::Starting) {
                Ok(id) => id,
                Err(why) => return Some(why),
            };
            let node = self.replicas[id].node;
            let resident = self.resident(node, now);
            if resident >= self.model.weights_bytes as f64 {
                self.warm_starts += 1;
            } else {
                self.cold_starts += 1;
            }
            // The replica's own read fills the cache at storage speed.
            self.nodes[node].fill_start = Some(now - resident / self.model.storage_bw);
            let ready_at = now + self.model.load_s(resident);
            self.events.ready(ready_at, id);
            self.starting += 1;
            current += 1;
        }
        while current > desired {
            let victim = self
                .live
                .iter()
                .copied()
                .filter(|r| matches!(self.replicas[*r].state, State::Starting | State::Ready))
                .max_by(|a, b| {
                    let (ra, rb) = (&self.replicas[*a], &self.replicas[*b]);
                    let starting = |r: &Replica| r.state == State::Starting;
                    starting(ra)
                        .cmp(&starting(rb))
                        .then(ra.ready_s.total_cmp(&rb.ready_s))
                        .then(a.cmp(b))
                });
            let Some(id) = victim else { break };
            match self.replicas[id].state {
                State::Starting => {
                    self.starting -= 1;
                    self.stop(id, now);
                }
                _ => {
                    self.ready -= 1;
                    self.free.remove(id);
                    self.replicas[id].state = State::Draining;
                    self.draining += 1;
                    if self.replicas[id].running == 0 {
                        self.draining -= 1;
                        self.stop(id, now);
                    }
                }
            }
            current -= 1;
        }
        None
    }

    fn stop(&mut self, id: usize, now: f64) {
        let r = &mut self.replicas[id];
        r.state = State::Stopped;
        r.stopped_s = Some(now);
        let node = r.node;
        self.nodes[node].replicas -= 1;
        for g in r.gpus.clone() {
            if let Some(t) = self.nodes[node].taken.get_mut(g as usize) {
                *t = false;
            }
        }
        self.live.retain(|x| *x != id);
    }

    pub fn arrive(&mut self, r: &Request) {
        self.metrics.on_arrival(r.arrival_s);
        self.arrivals_this_s += 1;
        self.queue.push_back(Pending {
            arrival_s: r.arrival_s,
            service_s: self.model.service_s(r),
            prefill_s: f64::from(r.context_tokens) / self.model.prefill_tps,
        });
        self.dispatch(r.arrival_s);
    }

    /// Hands queued requests, oldest first, to the least-loaded ready
    /// replicas with a free slot. Each joins its replica's batch, which
    /// slows the requests already running there.
    fn dispatch(&mut self, now: f64) {
        while !self.queue.is_empty() {
            let Some((load, id)) = self.free.least_loaded() else {
                return;
            };
            let Some(p) = self.queue.pop_front() else {
                return;
            };
            self.catch_up(id, now);
            let speed = self.model.speed(load + 1);
            let r = &mut self.replicas[id];
            r.batch.push(InFlight {
                done_at: r.progress + p.service_s,
                arrival_s: p.arrival_s,
                start_s: now,
                // The prompt at the speed of the batch it joins.
                first_token_s: now + p.prefill_s / speed,
            });
            r.running = load + 1;
            self.running += 1;
            self.free.insert(id, load + 1);
            self.schedule(id, now);
        }
    }

    /// Brings replica `id`'s progress up to `now` at its batch's speed.
    fn catch_up(&mut self, id: usize, now: f64) {
        let speed = self.model.speed(self.replicas[id].running);
        let r = &mut self.replicas[id];
        r.progress += (now - r.progress_at).max(0.0) * speed;
        r.progress_at = now;
    }

    /// Schedules replica `id`'s next completion at its batch's current
    /// speed; any completion scheduled before becomes stale.
    fn schedule(&mut self, id: usize, now: f64) {
        let speed = self.model.speed(self.replicas[id].running);
        let r = &mut self.replicas[id];
        r.generation = r.generation.wrapping_add(1);
        if let Some(first) = r.batch.peek() {
            let t = now + (first.done_at - r.progress).max(0.0) / speed;
            self.events.done(t, id, r.generation);
        }
    }

    /// Records the requests on replica `id` that are done by `now`; returns
    /// how many.
    fn complete(&mut self, id: usize, now: f64) -> u32 {
        let mut n = 0;
        let r = &mut self.replicas[id];
        // A completion lands where its schedule said, up to float rounding.
        let reached = r.progress + 1e-9 * (1.0 + r.progress.abs());
        while r.batch.peek().is_some_and(|f| f.done_at <= reached) {
            let Some(f) = r.batch.pop() else { break };
            n += 1;
            let latency_s = now - f.arrival_s;
            if self.track_latency {
                self.metrics.recent.record(latency_s);
            }
            self.metrics.on_served(Outcome {
                arrival_s: f.arrival_s,
                start_s: f.start_s,
                first_token_s: f.first_token_s.min(now),
                finish_s: now,
            });
        }
        r.running -= n;
        self.running -= n;
        n
    }

    pub fn next_event_s(&self) -> Option<f64> {
        self.events.next_s()
    }

    /// Handles the earliest event.
    pub fn step(&mut self) {
        let Some((t, event)) = self.events.pop() else {
            return;
        };
        match event {
            Event::Done {
                replica,
                generation,
            } => {
                if self.replicas[replica].generation != generation {
                    return;
                }
                self.catch_up(replica, t);
                self.complete(replica, t);
                let r = &self.replicas[replica];
                let running = r.running;
                match r.state {
                    State::Ready => self.free.insert(replica, running),
                    State::Draining if running == 0 => {
                        self.draining -= 1;
                        self.stop(replica, t);
                    }
                    _ => {}
                }
                self.schedule(replica, t);
            }
            Event::Ready { replica } => {
                let r = &mut self.replicas[replica];
                // A replica removed while loading never becomes ready.
                if r.state != State::Starting {
                    return;
                }
                r.state = State::Ready;
                r.ready_s = t;
                self.starts_this_s.0 += t - r.placed_s;
                self.starts_this_s.1 += 1;
                self.starting -= 1;
                self.ready += 1;
                self.free.insert(replica, 0);
            }
        }
        self.dispatch(t);
    }

    /// Ends a virtual second: the per-second arrival count and the recent
    /// latency window move on.
    pub fn end_second(&mut self, now: f64) {
        self.arrivals_last_s = std::mem::take(&mut self.arrivals_this_s);
        self.starts_last_s = std::mem::take(&mut self.starts_this_s);
        if self.track_latency {
            self.metrics.recent.roll();
        }
        self.metrics.on_tick(now, self.live_replicas());
    }

    /// Requests queued or being served.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty() || self.running > 0
    }

    /// Gives up on the requests still queued at `end`; returns how many.
    /// Those already running are recorded with the finish their batch, as
    /// it is, would give them.
    pub fn abandon(&mut self, end: f64) -> u64 {
        for id in 0..self.replicas.len() {
            if self.replicas[id].batch.is_empty() {
                continue;
            }
            self.catch_up(id, end);
            let speed = self.model.speed(self.replicas[id].running);
            let r = &mut self.replicas[id];
            for f in std::mem::take(&mut r.batch) {
                let finish_s = end + (f.done_at - r.progress).max(0.0) / speed;
                self.metrics.on_served(Outcome {
                    arrival_s: f.arrival_s,
                    start_s: f.start_s,
                    first_token_s: f.first_token_s,
                    finish_s,
                });
            }
        }
        let mut n = 0;
        for p in std::mem::take(&mut self.queue) {
            self.metrics.on_unfinished(p.arrival_s, end);
            n += 1;
        }
        n
    }

    /// GPU-hours held by replicas (placed until stopped) within `[0, end]`.
    pub fn gpu_hours(&self, end: f64) -> f64 {
        let secs: f64 = self
            .replicas
            .iter()
            .map(|r| {
                let from = r.placed_s.min(end);
                let to = r.stopped_s.unwrap_or(end).min(end);
                (to - from).max(0.0) * r.gpus.len() as f64
            })
            .sum();
        secs / 3600.0
    }
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;
