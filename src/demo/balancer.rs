//! Client-side load balancing over a model's replicas, as a gateway in front
//! of the fleet would do it: least outstanding requests first (ties
//! round-robin), and a wake call to the coordinator, at most once a second,
//! while the model has no ready replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest gap between two wake calls for one model: a gateway holding
/// requests asks again while it waits, without flooding the coordinator.
pub const WAKE_EVERY: Duration = Duration::from_secs(1);

/// Requests sent to each replica and not yet answered, and where the
/// round-robin among equally busy replicas stands.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    outstanding: HashMap<String, u32>,
    cursor: usize,
}

impl LeastOutstanding {
    /// The replica the next request goes to, counted as outstanding until
    /// `finish`: the one with the fewest outstanding requests; among equals,
    /// the first at or after the round-robin cursor, so idle replicas take
    /// turns instead of the first one taking everything. `None` when
    /// `replicas` is empty.
    pub fn pick(&mut self, replicas: &[String]) -> Option<String> {
        let n = replicas.len();
        let count = |r: &String| self.outstanding.get(r).copied().unwrap_or(0);
        let least = replicas.iter().map(count).min()?;
        let chosen = (0..n)
            .map(|k| (self.cursor + k) % n)
            .find(|&i| count(&replicas[i]) == least)?;
        self.cursor = (chosen + 1) % n;
        let replica = replicas[chosen].clone();
        *self.outstanding.entry(replica.clone()).or_default() += 1;
        Some(replica)
    }

    /// One request to `replica` was answered (or given up on).
    pub fn finish(&mut self, replica: &str) {
        if let Some(n) = self.outstanding.get_mut(replica) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outstanding.remove(replica);
            }
        }
    }

    pub fn outstanding(&self, replica: &str) -> u32 {
        self.outstanding.get(replica).copied().unwrap_or(0)
    }
}

/// A balancer shared by the request tasks of one run.
pub type SharedBalancer = Arc<Mutex<LeastOutstanding>>;

/// Locks the balancer; a request task that panicked while holding it left
/// only counters behind, which stay usable.
fn lock(b: &SharedBalancer) -> std::sync::MutexGuard<'_, LeastOutstanding> {
    b.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request's claim on a replica; the replica's outstanding count drops
/// when this is dropped, so an aborted request cannot leak a count.
pub struct Outstanding {
    balancer: SharedBalancer,
    replica: String,
}

impl Outstanding {
    pub fn pick(balancer: &SharedBalancer, replicas: &[String]) -> Option<Self> {
        let replica = lock(balancer).pick(replicas)?;
        Some(Self {
            balancer: balancer.clone(),
            replica,
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        lock(&self.balancer).finish(&self.replica);
    }
}

/// When the next wake call is allowed.
#[derive(Debug, Default)]
pub struct WakePacer {
    last: Option<Instant>,
}

impl WakePacer {
    /// Whether a wake call may go out at `now`; if so, it counts as sent.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|last| now >= last + WAKE_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Calls `POST /v1/models/{model}/wake` on the coordinator, paced by
/// [`WakePacer`]; the call runs in the background so a held request never
/// waits on it.
pub struct Waker {
    client: reqwest::Client,
    url: String,
    model: String,
    pacer: Mutex<WakePacer>,
}

impl Waker {
    pub fn new(client: reqwest::Client, coordinator_http: &str, model: &str) -> Self {
        Self {
            client,
            url: wake_url(coordinator_http, model),
            model: model.to_string(),
            pacer: Mutex::new(WakePacer::default()),
        }
    }

    /// Sends a wake call unless one went out less than [`WAKE_EVERY`] ago.
    pub fn nudge(&self, now: Instant) {
        if !self
            .pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(now)
        {
            return;
        }
        let (client, url, model) = (self.client.clone(), self.url.clone(), self.model.clone());
        tokio::spawn(async move {
            match client.post(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!("no ready replica of {model}: asked the coordinator to wake it")
                }
                Ok(r) => tracing::warn!("waking {model}: {url} answered {}", r.status()),
                Err(e) => tracing::warn!("waking {model}: cannot reach {url}: {e}"),
            }
        });
    }
}

/// The wake URL of a model on a coordinator's HTTP base URL.
pub fn wake_url(coordinator_http: &str, model: &str) -> String {
    format!(
        "{}/v1/models/{model}/wake",
        coordinator_http.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_idle_replica_gets_the_request_when_another_is_busy() {
        let replicas = urls(&["a", "b", "c"]);
        let mut lb = LeastOutstanding::default();
        // a and b each hold a slow request; c finished its own.
        assert_eq!(lb.pick(&replicas).as_deref(), Some("a"));
        assert_eq!(lb.pick(&replicas).as_deref(), Some("b"));
        assert_eq!(lb.pick(&replicas).as_deref(), Some("c"));
        lb.finish("c");
        assert_eq!(lb.pick(&replicas).as_deref(), Some("c"));
        lb.finish("c");
        assert_eq!(lb.pick(&replicas).as_deref(), Some("c"));
        assert_eq!(
            (
                lb.outstanding("a"),
                lb.outstanding("b"),
                lb.outstanding("c")
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn equally_busy_replicas_take_turns() {
        let replicas = urls(&["a", "b", "c"]);
        let mut lb = LeastOutstanding::default();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let r = lb.pick(&replicas).unwrap();
            lb.finish(&r);
            seen.push(r);
        }
        assert_eq!(seen, urls(&["a", "b", "c", "a", "b", "c"]));
        assert_eq!(lb.pick(&[]), None);
    }

    #[test]
    fn a_replica_that_appears_starts_with_nothing_outstanding() {
        let mut lb = LeastOutstanding::default();
        let one = urls(&["a"]);
        lb.pick(&one);
        lb.pick(&one);
        let two = urls(&["a", "new"]);
        assert_eq!(lb.pick(&two).as_deref(), Some("new"));
        assert_eq!(lb.pick(&two).as_deref(), Some("new"));
        // Now equal (2 each): turns resume.
        assert_eq!(lb.outstanding("a"), 2);
        lb.finish("gone");
        assert_eq!(lb.outstanding("gone"), 0);
    }

    #[test]
    fn a_dropped_claim_frees_its_replica() {
        let lb = SharedBalancer::default();
        let replicas = urls(&["a", "b"]);
        let first = Outstanding::pick(&lb, &replicas).unwrap();
        assert_eq!(first.replica(), "a");
        let second = Outstanding::pick(&lb, &replicas).unwrap();
        assert_eq!(second.replica(), "b");
        drop(first);
        assert_eq!(lock(&lb).outstanding("a"), 0);
        assert_eq!(Outstanding::pick(&lb, &replicas).unwrap().replica(), "a");
    }

    #[test]
    fn wake_calls_go_out_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut pacer = WakePacer::default();
        assert!(pacer.due(t0));
        assert!(!pacer.due(t0 + Duration::from_millis(400)));
        assert!(!pacer.due(t0 + Duration::from_millis(999)));
        assert!(pacer.due(t0 + Duration::from_millis(1000)));
        assert!(!pacer.due(t0 + Duration::from_millis(1500)));
        assert!(pacer.due(t0 + Duration::from_secs(5)));
        assert_eq!(
            wake_url("http://c:1/", "chat"),
            "http://c:1/v1/models/chat/wake"
        );
    }
}
