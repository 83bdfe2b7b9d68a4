//! Which ready replica takes the next request: replicas with a free slot,
//! bucketed by how many requests they run, so finding the least loaded one
//! and moving a replica between loads are constant-time.

/// Ready replicas with a free slot, by load.
#[derive(Debug, Clone, Default)]
pub struct FreeSlots {
    /// `buckets[n]`: replicas running `n` requests.
    buckets: Vec<Vec<usize>>,
    /// Where each replica sits: (load, position in its bucket).
    at: Vec<Option<(usize, usize)>>,
}

impl FreeSlots {
    /// For replicas that run up to `concurrency` requests at once.
    pub fn new(concurrency: u32) -> Self {
        FreeSlots {
            buckets: vec![Vec::new(); concurrency as usize],
            at: Vec::new(),
        }
    }

    /// Files replica `id` under `load`; a full replica (load at or above the
    /// concurrency) is not filed, since it cannot take a request.
    pub fn insert(&mut self, id: usize, load: u32) {
        self.remove(id);
        let load = load as usize;
        if load >= self.buckets.len() {
            return;
        }
        if self.at.len() <= id {
            self.at.resize(id + 1, None);
        }
        self.at[id] = Some((load, self.buckets[load].len()));
        self.buckets[load].push(id);
    }

    pub fn remove(&mut self, id: usize) {
        let Some((load, pos)) = self.at.get_mut(id).and_then(Option::take) else {
            return;
        };
        let bucket = &mut self.buckets[load];
        bucket.swap_remove(pos);
        if let Some(moved) = bucket.get(pos).copied() {
            self.at[moved] = Some((load, pos));
        }
    }

    /// The least-loaded replica with a free slot, and its load. Among equals,
    /// the one filed last (deterministic, and warm in the CPU's caches).
    pub fn least_loaded(&self) -> Option<(u32, usize)> {
        self.buckets
            .iter()
            .enumerate()
            .find_map(|(load, b)| b.last().map(|id| (load as u32, *id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_least_loaded_and_follows_moves() {
        let mut f = FreeSlots::new(3);
        assert_eq!(f.least_loaded(), None);
        f.insert(0, 1);
        f.insert(1, 2);
        f.insert(2, 1);
        assert_eq!(f.least_loaded(), Some((1, 2)));
        f.insert(2, 3);
        assert_eq!(
            f.least_loaded(),
            Some((1, 0)),
            "a full replica is not filed"
        );
        f.remove(0);
        assert_eq!(f.least_loaded(), Some((2, 1)));
        f.insert(0, 0);
        assert_eq!(f.least_loaded(), Some((0, 0)));
        f.remove(0);
        f.remove(1);
        f.remove(7);
        assert_eq!(f.least_loaded(), None);
    }

    #[test]
    fn removal_from_the_middle_keeps_positions_right() {
        let mut f = FreeSlots::new(2);
        for id in 0..5 {
            f.insert(id, 0);
        }
        f.remove(1);
        f.remove(4);
        f.remove(0);
        let mut left = Vec::new();
        while let Some((_, id)) = f.least_loaded() {
            left.push(id);
            f.remove(id);
        }
        left.sort();
        assert_eq!(left, vec![2, 3]);
    }
}
