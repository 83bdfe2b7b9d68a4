//! The warm budget: which cached models to evict (least recently used first,
//! never a protected one) when residency exceeds it, and the eviction itself.

use std::time::Instant;

use super::files::{open_for_read, ModelFiles};

/// A cached model as the budget sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetEntry<K> {
    pub key: K,
    pub resident_bytes: u64,
    /// Last time the model was asked to be warm or ran a replica.
    pub last_use: Instant,
    /// Assigned warm or running a replica: never evicted.
    pub protected: bool,
}

/// The unprotected entries to evict, least recently used first, so that the
/// resident total fits within `budget_bytes`; as few as that takes. When the
/// protected entries alone exceed the budget every unprotected one goes.
pub fn plan_eviction<K: Clone>(entries: &[BudgetEntry<K>], budget_bytes: u64) -> Vec<K> {
    let mut total: u64 = entries.iter().map(|e| e.resident_bytes).sum();
    let mut candidates: Vec<&BudgetEntry<K>> = entries
        .iter()
        .filter(|e| !e.protected && e.resident_bytes > 0)
        .collect();
    candidates.sort_by_key(|e| e.last_use);
    let mut evict = Vec::new();
    for entry in candidates {
        if total <= budget_bytes {
            break;
        }
        total -= entry.resident_bytes;
        evict.push(entry.key.clone());
    }
    evict
}

/// Drops the files from the page cache with POSIX_FADV_DONTNEED. Pages a
/// running process maps stay (the kernel's choice), and so do dirty ones.
/// Returns one line per file that could not be evicted.
pub fn evict(files: &ModelFiles) -> Vec<String> {
    let mut problems = Vec::new();
    for listed in &files.files {
        let advised = open_for_read(&listed.path)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                )
                .map_err(|e| {
                    format!(
                        "{}: posix_fadvise(DONTNEED) failed: {e}",
                        listed.path.display()
                    )
                })
            });
        if let Err(problem) = advised {
            problems.push(problem);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::warm::files::list_model_files;
    use crate::agent::warm::residency::measure;
    use crate::agent::warm::residency::tests::cache_dir;
    use std::time::Duration;

    fn entry(
        key: &'static str,
        resident: u64,
        age_s: u64,
        protected: bool,
        now: Instant,
    ) -> BudgetEntry<&'static str> {
        BudgetEntry {
            key,
            resident_bytes: resident,
            last_use: now - Duration::from_secs(age_s),
            protected,
        }
    }

    #[test]
    fn over_budget_evicts_least_recently_used_first_and_only_as_much_as_needed() {
        let now = Instant::now() + Duration::from_secs(1000);
        let entries = [
            entry("recent", 30, 10, false, now),
            entry("oldest", 30, 300, false, now),
            entry("older", 30, 200, false, now),
            entry("assigned", 30, 500, true, now),
        ];
        assert_eq!(plan_eviction(&entries, 70), ["oldest", "older"]);
        assert_eq!(plan_eviction(&entries, 90), ["oldest"]);
        assert!(plan_eviction(&entries, 120).is_empty());
    }

    #[test]
    fn protected_entries_are_kept_even_when_they_alone_exceed_the_budget() {
        let now = Instant::now() + Duration::from_secs(1000);
        let entries = [
            entry("replica", 100, 900, true, now),
            entry("assigned", 100, 800, true, now),
            entry("old", 10, 1, false, now),
            entry("empty", 0, 999, false, now),
        ];
        assert_eq!(plan_eviction(&entries, 50), ["old"]);
    }

    #[test]
    fn eviction_drops_a_models_pages_from_the_cache() {
        let dir = cache_dir();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, vec![3u8; 2 << 20]).unwrap();
        nix::unistd::fdatasync(std::fs::File::open(&path).unwrap()).unwrap();
        let listing = list_model_files(&path, &[dir.path().to_path_buf()]).unwrap();
        std::fs::read(&path).unwrap();
        assert_eq!(measure(&listing).resident_bytes, 2 << 20);

        assert!(evict(&listing).is_empty());
        let after = measure(&listing).resident_bytes;
        if after == 2 << 20 {
            eprintln!(
                "SKIP: this filesystem ignores POSIX_FADV_DONTNEED; eviction cannot be observed"
            );
            return;
        }
        assert!(after < 2 << 20);
    }
}
