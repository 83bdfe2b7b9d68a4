//! The serving model on tiny traces whose latencies are worked out by hand.

use super::*;
use crate::sim::report::Timeline;

/// Two slots per replica; a request of 1000 prompt and 10 generated tokens
/// takes 1 s + 1 s. Weights of 100 bytes: 10 s from storage, 1 s from cache,
/// plus 5 s of engine start.
fn model() -> ServingModel {
    ServingModel {
        concurrency: 2,
        prefill_tps: 1000.0,
        decode_tps: 10.0,
        batch_slowdown: 0.0,
        weights_bytes: 100,
        storage_bw: 10.0,
        cache_bw: 100.0,
        engine_init_s: 5.0,
    }
}

fn cluster(nodes: u32, gpus: u32) -> Cluster {
    Cluster::new(
        FleetShape {
            nodes,
            gpus_per_node: gpus,
            gpu_memory_bytes: 80,
        },
        model(),
        ReplicaNeeds {
            gpus: 1,
            gpu_memory_bytes: 10,
            spread: false,
        },
        Metrics::new(10.0, Timeline::new(100.0, 10), true),
    )
}

fn req(t: f64) -> Request {
    Request {
        arrival_s: t,
        context_tokens: 1000,
        generated_tokens: 10,
    }
}

/// Handles every event up to `t`.
fn run_until(c: &mut Cluster, t: f64) {
    while c.next_event_s().is_some_and(|e| e <= t) {
        c.step();
    }
}

fn replay(c: &mut Cluster, reqs: &[Request]) {
    for r in reqs {
        run_until(c, r.arrival_s);
        c.arrive(r);
    }
    run_until(c, f64::INFINITY);
}

fn latencies(c: &Cluster) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = c
        .metrics
        .outcomes()
        .iter()
        .map(|o| (o.finish_s - o.arrival_s, o.start_s - o.arrival_s))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

#[test]
fn service_and_load_times_follow_the_flags() {
    let m = model();
    assert_eq!(m.service_s(&req(0.0)), 2.0);
    assert_eq!(m.cold_start_s(), 15.0);
    assert_eq!(m.load_s(100.0), 6.0);
    assert_eq!(m.load_s(50.0), 0.5 + 5.0 + 5.0);
}

#[test]
fn a_full_replica_queues_the_next_request_fifo() {
    let mut c = cluster(1, 1);
    c.preload(1, true).unwrap();
    // 0 and 0.5 run at once (2 slots); 1.0 waits for the slot freed at 2.0.
    replay(&mut c, &[req(0.0), req(0.5), req(1.0)]);
    assert_eq!(latencies(&c), vec![(2.0, 0.0), (2.0, 0.0), (3.0, 1.0)]);
    assert!(!c.busy());
}

#[test]
fn requests_go_to_the_least_loaded_replica() {
    let mut c = cluster(1, 2);
    c.preload(2, true).unwrap();
    // Four slots over two replicas: four at t=0 all start; the fifth waits
    // until the first finishes at 2.0.
    replay(&mut c, &[req(0.0), req(0.0), req(0.0), req(0.0), req(0.1)]);
    let l = latencies(&c);
    assert_eq!(l.len(), 5);
    assert!(
        l[..4].iter().all(|(lat, q)| *lat == 2.0 && *q == 0.0),
        "{l:?}"
    );
    assert!(
        (l[4].0 - 3.9).abs() < 1e-9 && (l[4].1 - 1.9).abs() < 1e-9,
        "{l:?}"
    );
    // While both replicas ran two each, each was full: load is balanced.
    let mut c = cluster(1, 2);
    c.preload(2, true).unwrap();
    c.arrive(&req(0.0));
    c.arrive(&req(0.0));
    assert_eq!(c.load().busy_share, Some(0.5));
    assert_eq!(c.load().running, 2);
}

#[test]
fn a_cold_start_then_a_warm_start_on_the_same_node() {
    let mut c = cluster(1, 1);
    assert_eq!(c.scale_to(1, 0.0, true), None);
    assert_eq!(c.cold_starts, 1);
    assert_eq!(c.load().starting, 1);
    // A request at 1 s waits for the replica: ready at 15 s, done at 17 s.
    replay(&mut c, &[req(1.0)]);
    assert_eq!(latencies(&c), vec![(16.0, 14.0)]);
    c.scale_to(0, 20.0, true);
    assert_eq!(c.live_replicas(), 0);
    // The node kept the weights: the next start reads them from cache.
    c.scale_to(1, 30.0, true);
    assert_eq!(c.warm_starts, 1);
    replay(&mut c, &[req(30.0)]);
    // Ready at 30 + 1 + 5 = 36, done at 38.
    assert_eq!(latencies(&c)[0], (8.0, 6.0));
}

#[test]
fn warm_aware_placement_uses_the_warmed_node_and_a_blind_one_does_not() {
    let mut aware = cluster(2, 1);
    aware.warm(1, 0.0);
    aware.scale_to(1, 10.0, true);
    assert_eq!((aware.warm_starts, aware.cold_starts), (1, 0));

    let mut blind = cluster(2, 1);
    blind.warm(1, 0.0);
    blind.scale_to(1, 10.0, false);
    assert_eq!((blind.warm_starts, blind.cold_starts), (0, 1));
}

#[test]
fn a_half_filled_cache_shortens_a_cold_start() {
    let mut c = cluster(1, 1);
    c.warm(0, 0.0);
    c.scale_to(1, 5.0, true);
    assert_eq!(c.cold_starts, 1);
    replay(&mut c, &[req(5.0)]);
    // Ready at 5 + 10.5, done 2 s later.
    assert_eq!(latencies(&c), vec![(12.5, 10.5)]);
}

#[test]
fn a_removed_replica_drains_its_requests_and_holds_its_gpu_until_then() {
    let mut c = cluster(1, 1);
    c.preload(1, true).unwrap();
    c.arrive(&req(0.0));
    c.scale_to(0, 1.0, true);
    assert_eq!(c.live_replicas(), 1, "still draining");
    assert_eq!(c.serving_replicas(), 0);
    run_until(&mut c, f64::INFINITY);
    assert_eq!(latencies(&c), vec![(2.0, 0.0)]);
    assert_eq!(c.live_replicas(), 0);
    assert!((c.gpu_hours(3600.0) - 2.0 / 3600.0).abs() < 1e-12);
}

#[test]
fn removal_takes_starting_replicas_first() {
    let mut c = cluster(1, 4);
    c.preload(2, true).unwrap();
    c.scale_to(3, 1.0, true);
    assert_eq!(c.load().starting, 1);
    c.scale_to(2, 2.0, true);
    let l = c.load();
    assert_eq!((l.ready, l.starting), (2, 0));
    // The cancelled start never turns ready.
    run_until(&mut c, f64::INFINITY);
    assert_eq!(c.load().ready, 2);
}

#[test]
fn gpu_hours_count_placed_replicas_over_the_span() {
    let mut c = cluster(2, 2);
    c.preload(2, true).unwrap();
    c.scale_to(3, 1800.0, true);
    assert!((c.gpu_hours(3600.0) - 2.5).abs() < 1e-9);
}

#[test]
fn a_full_fleet_explains_why() {
    let mut c = cluster(1, 1);
    c.preload(1, true).unwrap();
    let why = c.scale_to(2, 1.0, true).unwrap();
    assert!(why.starts_with("needs 1 GPU"), "{why}");
    assert_eq!(c.serving_replicas(), 1);
}

#[test]
fn unfinished_requests_count_as_slo_misses() {
    let mut c = cluster(1, 1);
    c.arrive(&req(0.0));
    assert_eq!(c.abandon(50.0), 1);
}

#[test]
fn a_request_joining_the_batch_slows_the_one_running() {
    // Each request is 2 s alone. With a slowdown of 0.5, two on one replica
    // each go at 1 / 1.5 of their speed: A, alone for its first second,
    // needs 1.5 s for its second; B, which joined at 1 s, has done 1 s of
    // its work when A leaves at 2.5 s, and finishes alone at 3.5 s.
    let mut c = Cluster::new(
        FleetShape {
            nodes: 1,
            gpus_per_node: 1,
            gpu_memory_bytes: 80,
        },
        ServingModel {
            batch_slowdown: 0.5,
            ..model()
        },
        ReplicaNeeds {
            gpus: 1,
            gpu_memory_bytes: 10,
            spread: false,
        },
        Metrics::new(10.0, Timeline::new(100.0, 10), true),
    );
    c.preload(1, true).unwrap();
    replay(&mut c, &[req(0.0), req(1.0)]);
    let mut got: Vec<(f64, f64, f64)> = c
        .metrics
        .outcomes()
        .iter()
        .map(|o| (o.arrival_s, o.first_token_s, o.finish_s))
        .collect();
    got.sort_by(|a, b| a.0.total_cmp(&b.0));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(got[0].2, 2.5), "{got:?}");
    // B's prompt (1 s alone) at the shared speed: first token at 2.5 s.
    assert!(close(got[1].1, 2.5) && close(got[1].2, 3.5), "{got:?}");
    // Without the slowdown: 2 s and 3 s.
    let mut plain = cluster(1, 1);
    plain.preload(1, true).unwrap();
    replay(&mut plain, &[req(0.0), req(1.0)]);
    let finish: Vec<f64> = plain
        .metrics
        .outcomes()
        .iter()
        .map(|o| o.finish_s)
        .collect();
    assert!(finish.contains(&2.0) && finish.contains(&3.0), "{finish:?}");
}
