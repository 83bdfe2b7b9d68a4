//! Prefix-aware placement: requests that share a long prompt prefix (a
//! tenant's system prompt, a conversation so far) go to the replica whose
//! engine already holds that prefix in its KV cache, as long as that replica
//! is not much busier than the rest.
//!
//! Each request's prompt becomes the hashes of its leading fixed-size blocks,
//! each hash covering everything before it too. The gateway remembers, per
//! replica, the block hashes it sent there (a bounded, approximate index: it
//! never learns what the engine evicted). A replica that matches the most
//! leading blocks wins unless it has `imbalance` more requests in flight than
//! the least busy one. A prompt no replica knows goes by consistent hashing
//! of its first block with bounded loads, so gateways that share nothing
//! still agree on where a new prefix lives; past the load bound it walks on.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// Bytes per block: about 30 tokens of English.
pub const BLOCK_BYTES: usize = 128;
/// Blocks hashed per request: the first 8 KiB of the prompt.
pub const MAX_BLOCKS: usize = 64;
/// Block hashes remembered per replica.
pub const INDEX_CAPACITY: usize = 16_384;
/// A replica takes a new prefix by consistent hashing while its load is at
/// most this factor over the average (Mirrokni et al.'s bound).
const LOAD_BOUND: f64 = 1.25;
/// Points per replica on the hash ring: with one each, three replicas can
/// split the ring 90/5/5.
const RING_POINTS: u64 = 64;

pub use crate::config::gateway::Routing;

/// The cumulative hashes of the prompt's leading blocks (a trailing partial
/// block counts too, so short prompts have one).
pub fn prefix_hashes(prompt: &str) -> Vec<u64> {
    let bytes = prompt.as_bytes();
    let mut out = Vec::new();
    let mut h = DefaultHasher::new();
    for block in bytes.chunks(BLOCK_BYTES).take(MAX_BLOCKS) {
        block.hash(&mut h);
        out.push(h.finish());
    }
    out
}

/// The text a request's prefix is made of: the completion's `prompt`, or the
/// chat's messages in order; empty when the body has neither.
pub fn prompt_text(body: &serde_json::Value) -> String {
    use serde_json::Value;
    let mut out = String::new();
    match body.get("prompt") {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(items)) => {
            if let Some(Value::String(s)) = items.first() {
                out.push_str(s);
            }
        }
        _ => {}
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            if let Some(Value::String(role)) = m.get("role") {
                out.push_str(role);
                out.push('\n');
            }
            match m.get("content") {
                Some(Value::String(s)) => out.push_str(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(Value::String(t)) = p.get("text") {
                            out.push_str(t);
                        }
                    }
                }
                _ => {}
            }
            out.push('\n');
        }
    }
    out
}

/// Block hashes recently sent to one replica, oldest forgotten first.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    known: HashSet<u64>,
    order: VecDeque<u64>,
}

impl PrefixIndex {
    pub fn record(&mut self, hashes: &[u64]) {
        for h in hashes {
            if self.known.insert(*h) {
                self.order.push_back(*h);
            }
        }
        while self.order.len() > INDEX_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
    }

    /// How many leading blocks of `hashes` this replica has seen.
    pub fn matched(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.known.contains(h)).count()
    }
}

/// A replica with room, as the choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub in_flight: u32,
    pub matched: usize,
}

/// Why a replica was chosen, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixChoice {
    /// It held the longest prefix.
    Hit,
    /// Nobody knew the prefix (or the holder was too busy): consistent hashing.
    Hashed,
}

/// Chooses among `open` (not empty) for a request with `hashes`; `None`
/// when the request has no prompt to place by.
pub fn choose(
    open: &[Candidate<'_>],
    hashes: &[u64],
    imbalance: u32,
) -> Option<(usize, PrefixChoice)> {
    let first = *hashes.first()?;
    let least = open.iter().map(|c| c.in_flight).min()?;
    let best = (0..open.len()).max_by(|&a, &b| {
        let (x, y) = (&open[a], &open[b]);
        x.matched
            .cmp(&y.matched)
            .then(y.in_flight.cmp(&x.in_flight))
    })?;
    if open[best].matched > 0 && open[best].in_flight <= least.saturating_add(imbalance) {
        return Some((best, PrefixChoice::Hit));
    }
    // Consistent hashing with bounded loads: the first replica clockwise of
    // the prefix's point whose load stays within the bound.
    let total: u32 = open.iter().map(|c| c.in_flight).sum();
    let bound = (LOAD_BOUND * f64::from(total + 1) / open.len() as f64).ceil() as u32;
    let mut ring: Vec<(u64, usize)> = open
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..RING_POINTS).map(move |k| (point(c.id, k), i)))
        .collect();
    ring.sort_unstable();
    let start = ring.partition_point(|(p, _)| *p < first);
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1)
        .find(|&i| open[i].in_flight < bound.max(1))
        .map(|i| (i, PrefixChoice::Hashed))
}

fn point(id: &str, k: u64) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    k.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cands<'a>(v: &[(&'a str, u32, usize)]) -> Vec<Candidate<'a>> {
        v.iter()
            .map(|(id, in_flight, matched)| Candidate {
                id,
                in_flight: *in_flight,
                matched: *matched,
            })
            .collect()
    }

    #[test]
    fn hashes_cover_everything_before_them() {
        let a = prefix_hashes(&"s".repeat(300));
        assert_eq!(a.len(), 3);
        let b = prefix_hashes(&format!("{}{}", "s".repeat(256), "different tail"));
        assert_eq!(a[..2], b[..2], "a shared 256-byte prefix shares two blocks");
        assert_ne!(a[2], b[2]);
        let c = prefix_hashes(&format!("x{}", "s".repeat(299)));
        assert_ne!(a[1], c[1], "a block's hash depends on the blocks before it");
        assert!(prefix_hashes("").is_empty());
        assert_eq!(prefix_hashes(&"y".repeat(100_000)).len(), MAX_BLOCKS);
    }

    #[test]
    fn the_prompt_comes_from_completions_and_chats() {
        assert_eq!(prompt_text(&json!({"prompt": "hello"})), "hello");
        assert_eq!(prompt_text(&json!({"prompt": ["a", "b"]})), "a");
        let chat = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ]});
        assert_eq!(prompt_text(&chat), "system\nbe brief\nuser\nhi\n");
        assert_eq!(prompt_text(&json!({"model": "m"})), "");
    }

    #[test]
    fn the_index_remembers_what_it_was_sent_and_forgets_the_oldest() {
        let mut idx = PrefixIndex::default();
        let h = prefix_hashes(&"p".repeat(1000));
        idx.record(&h[..3]);
        assert_eq!(idx.matched(&h), 3);
        assert_eq!(idx.matched(&prefix_hashes("other")), 0);
        let filler: Vec<u64> = (0..INDEX_CAPACITY as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        idx.record(&filler);
        assert_eq!(idx.matched(&h), 0, "the oldest entries went first");
    }

    #[test]
    fn the_longest_prefix_wins_until_its_replica_is_too_busy() {
        let h = prefix_hashes(&"q".repeat(500));
        let open = cands(&[("a", 2, 0), ("b", 3, 4), ("c", 1, 1)]);
        assert_eq!(choose(&open, &h, 4), Some((1, PrefixChoice::Hit)));
        // b is 2 over the least busy: past an imbalance of 1.
        let (i, why) = choose(&open, &h, 1).unwrap();
        assert_eq!(why, PrefixChoice::Hashed);
        assert!(open[i].in_flight < 3, "{open:?} chose {i}");
        assert_eq!(
            choose(&open, &[], 4),
            None,
            "no prompt: the caller balances by load"
        );
    }

    #[test]
    fn new_prefixes_hash_to_a_stable_replica_and_spread() {
        let open = cands(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0), ("d", 0, 0)]);
        let mut seen = std::collections::HashSet::new();
        for tenant in 0..64 {
            let h = prefix_hashes(&format!("tenant {tenant} system prompt"));
            let (i, why) = choose(&open, &h, 4).unwrap();
            assert_eq!(why, PrefixChoice::Hashed);
            // The same answer again: two gateways agree without talking.
            assert_eq!(choose(&open, &h, 4).unwrap().0, i);
            seen.insert(i);
        }
        assert_eq!(seen.len(), 4, "64 tenants land on every replica");
        // And evenly enough: no replica owns most of the ring.
        let ids: Vec<String> = (0..3).map(|i| format!("model-{i:05x}")).collect();
        let three = cands(&[(&ids[0], 0, 0), (&ids[1], 0, 0), (&ids[2], 0, 0)]);
        let mut per = [0; 3];
        for tenant in 0..300 {
            per[choose(&three, &prefix_hashes(&format!("t{tenant}")), 4)
                .unwrap()
                .0] += 1;
        }
        assert!(per.iter().all(|n| *n >= 50), "{per:?}");
        // A loaded replica passes new prefixes on.
        let busy = cands(&[("a", 9, 0), ("b", 0, 0)]);
        for tenant in 0..16 {
            let h = prefix_hashes(&format!("tenant {tenant}"));
            assert_eq!(choose(&busy, &h, 4).unwrap().0, 1);
        }
    }
}
