//! The warmer task end to end, on real files whose page-cache residency the
//! tests control (fdatasync + DONTNEED), with short refresh intervals.

use super::*;
use crate::agent::warm::residency::resident_bytes;
use crate::agent::warm::residency::tests::{cache_dir, write_cold};

const MIB: u64 = 1 << 20;

/// Creates cold models `names` of 1 MiB each under a fresh root; None
/// (after saying why) when the filesystem cannot make files cold.
fn cold_models(names: &[&str]) -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
    let dir = cache_dir();
    let mut paths = Vec::new();
    for name in names {
        let model = dir.path().join(name);
        std::fs::create_dir(&model).unwrap();
        if !write_cold(&model.join("model.safetensors"), (MIB - 4096) as usize)
            || !write_cold(&model.join("config.json"), 4096)
        {
            return None;
        }
        paths.push(model);
    }
    Some((dir, paths))
}

fn warmer(root: &Path, budget_bytes: u64) -> Warmer {
    Warmer::spawn(WarmerConfig {
        io_workers: 2,
        chunk_bytes: 256 << 10,
        refresh_interval: Duration::from_millis(300),
        ..WarmerConfig::new(vec![root.to_path_buf()], budget_bytes)
    })
}

fn spec(model: &str, path: &Path, lock: bool) -> WarmSpec {
    WarmSpec {
        model: model.into(),
        path: path.display().to_string(),
        lock,
    }
}

fn keep(model: &str, path: &Path) -> (String, String) {
    (model.into(), path.display().to_string())
}

fn find<'a>(statuses: &'a [WarmStatus], model: &str) -> Option<&'a WarmStatus> {
    statuses.iter().find(|s| s.model == model)
}

fn state_of(statuses: &[WarmStatus], model: &str) -> Option<String> {
    find(statuses, model).map(|s| s.state.clone())
}

async fn wait_for(
    warmer: &Warmer,
    what: &str,
    done: impl Fn(&[WarmStatus]) -> bool,
) -> Vec<WarmStatus> {
    let mut rx = warmer.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = rx.borrow_and_update().clone();
        if done(&statuses) {
            return statuses;
        }
        if !matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        ) {
            panic!(
                "timed out waiting for {what}; statuses: {:#?}",
                warmer.statuses()
            );
        }
    }
}

fn fully_resident(path: &Path, root: &Path) -> bool {
    let residency = resident_bytes(path, &[root.to_path_buf()]).unwrap();
    residency.resident_bytes == residency.total_bytes
}

/// Not evicted: the kernel may still drop a few pages of a model we do
/// not refill (a kept one) under memory pressure from other processes.
fn mostly_resident(path: &Path, root: &Path) -> bool {
    let residency = resident_bytes(path, &[root.to_path_buf()]).unwrap();
    residency.resident_bytes > residency.total_bytes * 3 / 4
}

#[tokio::test]
async fn an_assigned_model_is_warmed_from_cold_and_reported_resident() {
    let Some((dir, paths)) = cold_models(&["a"]) else {
        return;
    };
    assert!(!fully_resident(&paths[0], dir.path()));
    let warmer = warmer(dir.path(), 10 * MIB);
    warmer.set_desired(vec![spec("a", &paths[0], false)], vec![]);

    let statuses = wait_for(&warmer, "a resident", |s| {
        state_of(s, "a").as_deref() == Some("resident")
    })
    .await;
    let a = find(&statuses, "a").unwrap();
    assert_eq!((a.resident_bytes, a.total_bytes), (MIB, MIB));
    assert!(a.error.is_empty(), "{a:?}");
    assert!(!a.locked);
    assert!(fully_resident(&paths[0], dir.path()));
}

#[tokio::test]
async fn over_budget_the_least_recently_used_unassigned_model_is_evicted() {
    let Some((dir, paths)) = cold_models(&["a", "b", "c"]) else {
        return;
    };
    let warmer = warmer(dir.path(), 5 * MIB / 2);
    for (i, model) in ["a", "b", "c"].iter().enumerate() {
        warmer.set_desired(vec![spec(model, &paths[i], false)], vec![]);
        wait_for(&warmer, &format!("{model} resident"), |s| {
            state_of(s, model).as_deref() == Some("resident")
        })
        .await;
    }
    // a (dropped first) must go; b (dropped later) fits and stays cached.
    let statuses = wait_for(&warmer, "a evicted", |s| find(s, "a").is_none()).await;
    assert_eq!(state_of(&statuses, "b").as_deref(), Some("resident"));
    assert!(!fully_resident(&paths[0], dir.path()));
    assert!(mostly_resident(&paths[1], dir.path()));
    assert!(mostly_resident(&paths[2], dir.path()));
}

#[tokio::test]
async fn models_running_replicas_are_kept_and_a_model_that_cannot_fit_fails_clearly() {
    let Some((dir, paths)) = cold_models(&["a", "b", "c"]) else {
        return;
    };
    let warmer = warmer(dir.path(), 5 * MIB / 2);
    let kept = |warmer: &Warmer, model: &str| {
        find(&warmer.statuses(), model).is_some_and(|s| s.resident_bytes > MIB * 3 / 4)
    };
    for (i, model) in ["a", "b"].iter().enumerate() {
        warmer.set_desired(vec![spec(model, &paths[i], false)], vec![]);
        wait_for(&warmer, &format!("{model} resident"), |s| {
            state_of(s, model).as_deref() == Some("resident")
        })
        .await;
    }
    // a is least recently used, but a replica runs it now: b goes instead.
    warmer.set_desired(
        vec![spec("c", &paths[2], false)],
        vec![keep("a", &paths[0])],
    );
    wait_for(&warmer, "c resident and b evicted", |s| {
        state_of(s, "c").as_deref() == Some("resident") && find(s, "b").is_none()
    })
    .await;
    assert!(kept(&warmer, "a"));
    assert!(mostly_resident(&paths[0], dir.path()));
    assert!(!fully_resident(&paths[1], dir.path()));

    // a and c are protected and hold 2 of the 2.5 MiB: b cannot come back.
    warmer.set_desired(
        vec![spec("b", &paths[1], false)],
        vec![keep("a", &paths[0]), keep("c", &paths[2])],
    );
    let statuses = wait_for(&warmer, "b failed", |s| {
        state_of(s, "b").as_deref() == Some("failed")
    })
    .await;
    let b = find(&statuses, "b").unwrap();
    assert!(b.error.contains("does not fit the warm budget"), "{b:?}");
    assert!(!fully_resident(&paths[1], dir.path()));
    assert!(kept(&warmer, "a") && kept(&warmer, "c"));
}

#[tokio::test]
async fn a_locked_model_is_unlocked_when_no_longer_assigned() {
    let Some((dir, paths)) = cold_models(&["a"]) else {
        return;
    };
    let warmer = warmer(dir.path(), 10 * MIB);
    warmer.set_desired(vec![spec("a", &paths[0], true)], vec![]);
    let statuses = wait_for(&warmer, "a locked or refused", |s| {
        find(s, "a").is_some_and(|a| a.locked || a.error.contains("mlock refused"))
    })
    .await;
    let a = find(&statuses, "a").unwrap();
    if !a.locked {
        eprintln!(
            "SKIP: mlock refused here, lock release not testable: {}",
            a.error
        );
        assert_eq!(
            a.state, "resident",
            "a refused lock keeps the model warm unlocked"
        );
        return;
    }
    warmer.set_desired(vec![], vec![]);
    wait_for(&warmer, "a unlocked", |s| {
        find(s, "a").is_some_and(|a| !a.locked)
    })
    .await;
}

#[tokio::test]
async fn a_path_outside_the_roots_fails_and_goes_away_when_unassigned() {
    let dir = cache_dir();
    let outside = cache_dir();
    std::fs::write(outside.path().join("w.bin"), b"w").unwrap();
    let warmer = warmer(dir.path(), MIB);
    warmer.set_desired(
        vec![spec("x", &outside.path().join("w.bin"), false)],
        vec![],
    );
    let statuses = wait_for(&warmer, "x failed", |s| {
        state_of(s, "x").as_deref() == Some("failed")
    })
    .await;
    assert!(find(&statuses, "x")
        .unwrap()
        .error
        .contains("outside the model roots"));

    warmer.set_desired(vec![], vec![]);
    wait_for(&warmer, "x gone", |s| s.is_empty()).await;
}

#[tokio::test]
async fn the_same_desired_lists_again_change_nothing() {
    let dir = cache_dir();
    let warmer = warmer(dir.path(), MIB);
    let mut desired = warmer.desired.subscribe();
    let warm = vec![spec("a", &dir.path().join("a"), false)];
    warmer.set_desired(warm.clone(), vec![]);
    assert!(desired.has_changed().unwrap());
    desired.mark_unchanged();
    warmer.set_desired(warm, vec![]);
    assert!(!desired.has_changed().unwrap());
}

#[tokio::test]
async fn an_operator_eviction_drops_the_pages_and_reports_it_without_waiting_for_a_refresh() {
    let Some((dir, paths)) = cold_models(&["a", "b"]) else {
        return;
    };
    // A refresh far away: only the eviction itself can update the status.
    let warmer = Warmer::spawn(WarmerConfig {
        io_workers: 2,
        chunk_bytes: 256 << 10,
        refresh_interval: Duration::from_secs(3600),
        ..WarmerConfig::new(vec![dir.path().to_path_buf()], 10 * MIB)
    });
    let both = vec![spec("a", &paths[0], false), spec("b", &paths[1], false)];
    warmer.set_desired(both, vec![]);
    wait_for(&warmer, "a and b resident", |s| {
        state_of(s, "a").as_deref() == Some("resident")
            && state_of(s, "b").as_deref() == Some("resident")
    })
    .await;

    // `warm evict a`, while b is kept because a replica runs it (and is
    // asked to be evicted too: a running model's weights stay).
    warmer.set(Desired {
        warm: vec![],
        keep: vec![keep("b", &paths[1])],
        evict: vec![spec("a", &paths[0], false), spec("b", &paths[1], false)],
    });
    let statuses = wait_for(&warmer, "a no longer resident", |s| {
        find(s, "a").is_none_or(|a| a.resident_bytes < a.total_bytes / 2)
    })
    .await;
    assert!(
        !mostly_resident(&paths[0], dir.path()),
        "the pages really left"
    );
    assert_eq!(state_of(&statuses, "b").as_deref(), Some("resident"));
    assert!(mostly_resident(&paths[1], dir.path()));
}
