use super::*;
use crate::domain::{ModelRoutes, RouteTarget};
use crate::gateway::prefix::{prefix_hashes, Routing};

fn table(models: &[(&str, Option<u32>, &[&str])]) -> RoutingTable {
    let mut t = RoutingTable::default();
    for (name, max, replicas) in models {
        t.models.insert(
            name.to_string(),
            ModelRoutes {
                max_concurrency: *max,
                desired_replicas: replicas.len() as u32,
                pinned_replicas: None,
                replicas: replicas
                    .iter()
                    .map(|id| RouteTarget {
                        id: id.to_string(),
                        node: "n".into(),
                        address: format!("{id}:1"),
                        ongoing: 0.0,
                    })
                    .collect(),
            },
        );
    }
    t
}

/// Applies `t`; engines asked for their slots say nothing (the default applies).
fn apply(d: &mut Dispatcher, t: &RoutingTable, now: Instant) {
    for q in d.apply_table(t, now, &mut first) {
        d.learn_slots(&q.model, &q.replica, None, now, &mut first);
    }
}

/// Always the first choice: tests that do not care about randomness.
fn first(_: usize) -> usize {
    0
}

fn go(a: Admission) -> Grant {
    match a {
        Admission::Go(g) => g,
        other => panic!("expected Go, got {other:?}"),
    }
}

fn wait(a: Admission) -> (u64, oneshot::Receiver<Grant>, bool) {
    match a {
        Admission::Wait { id, rx, first } => (id, rx, first),
        other => panic!("expected Wait, got {other:?}"),
    }
}

#[test]
fn a_replica_takes_requests_only_while_it_has_room() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 8, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", Some(2), &["a"])]), now);
    let g1 = go(d.admit("m", vec![], now, &mut first));
    go(d.admit("m", vec![], now, &mut first));
    let (_, mut rx, is_first) = wait(d.admit("m", vec![], now, &mut first));
    assert!(!is_first, "the model has a replica: nothing to wake");
    assert!(rx.try_recv().is_err());
    // A request finishing hands its room to the queue at once.
    d.release("m", &g1.replica, now, &mut first);
    assert_eq!(rx.try_recv().unwrap().replica, "a");
    assert_eq!(d.demand(now)["m"].in_flight, 2);
    assert_eq!(d.demand(now)["m"].queued, 0);
}

#[test]
fn a_model_at_zero_holds_and_a_new_replica_takes_the_queue() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 1, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &[])]), now);
    let (_, mut rx1, first1) = wait(d.admit("m", vec![], now, &mut first));
    let (_, mut rx2, first2) = wait(d.admit("m", vec![], now, &mut first));
    assert!(first1 && !first2, "only the first arrival wakes the model");
    assert_eq!(d.demand(now)["m"].queued, 2);
    // The default max (1) lets one through per replica.
    apply(&mut d, &table(&[("m", None, &["a", "b"])]), now);
    let got = [
        rx1.try_recv().unwrap().replica,
        rx2.try_recv().unwrap().replica,
    ];
    assert_eq!(got.iter().filter(|r| *r == "a").count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|r| *r == "b").count(), 1, "{got:?}");
}

#[test]
fn overflow_unknown_models_and_no_table_are_refused() {
    let now = Instant::now();
    let mut d = Dispatcher::new(1, 1, Routing::LeastOutstanding);
    assert!(matches!(
        d.admit("m", vec![], now, &mut first),
        Admission::Refused(Refusal::NoTable)
    ));
    apply(&mut d, &table(&[("m", None, &[])]), now);
    let _held = wait(d.admit("m", vec![], now, &mut first));
    assert!(matches!(
        d.admit("m", vec![], now, &mut first),
        Admission::Refused(Refusal::QueueFull {
            queued: 1,
            capacity: 1
        })
    ));
    match d.admit("other", vec![], now, &mut first) {
        Admission::Refused(Refusal::UnknownModel { known }) => assert_eq!(known, ["m"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_abandoned_waiter_leaves_the_queue_and_leaks_no_slot() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 1, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["a"])]), now);
    let g = go(d.admit("m", vec![], now, &mut first));
    let (gone_id, gone_rx, _) = wait(d.admit("m", vec![], now, &mut first));
    let (_, mut next_rx, _) = wait(d.admit("m", vec![], now, &mut first));
    // The first waiter hangs up: the queue skips it.
    drop(gone_rx);
    d.abandon("m", gone_id, None, now, &mut first);
    d.release("m", &g.replica, now, &mut first);
    let granted = next_rx.try_recv().unwrap();
    assert_eq!(d.demand(now)["m"].in_flight, 1);
    // A grant delivered to a waiter that then gave up goes back.
    let (late_id, mut late_rx, _) = wait(d.admit("m", vec![], now, &mut first));
    d.release("m", &granted.replica, now, &mut first);
    let unread = late_rx.try_recv().ok();
    assert!(unread.is_some());
    d.abandon("m", late_id, unread, now, &mut first);
    assert_eq!(d.demand(now)["m"].in_flight, 0);
    assert_eq!(d.demand(now)["m"].queued, 0);
}

#[test]
fn dropped_receivers_are_skipped_when_serving_the_queue() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 1, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["a"])]), now);
    let g = go(d.admit("m", vec![], now, &mut first));
    let (_, dead, _) = wait(d.admit("m", vec![], now, &mut first));
    drop(dead);
    let (_, mut live, _) = wait(d.admit("m", vec![], now, &mut first));
    d.release("m", &g.replica, now, &mut first);
    assert_eq!(live.try_recv().unwrap().replica, "a");
    assert_eq!(d.demand(now)["m"].in_flight, 1);
}

#[test]
fn power_of_two_choices_prefers_the_less_loaded() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 100, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["a", "b"])]), now);
    // rng picks a (0) then b: a gets the first; with a busier, b wins.
    let mut picks = [0usize, 0].into_iter().cycle();
    let mut rng = |_: usize| picks.next().unwrap();
    assert_eq!(go(d.admit("m", vec![], now, &mut rng)).replica, "a");
    assert_eq!(go(d.admit("m", vec![], now, &mut rng)).replica, "b");
    assert_eq!(go(d.admit("m", vec![], now, &mut rng)).replica, "a");
}

#[test]
fn round_robin_takes_each_replica_with_room_in_turn_whatever_its_load() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 2, Routing::RoundRobin);
    apply(&mut d, &table(&[("m", None, &["a", "b", "c"])]), now);
    let order: Vec<Grant> = (0..4)
        .map(|_| go(d.admit("m", vec![], now, &mut first)))
        .collect();
    let ids: Vec<&str> = order.iter().map(|g| g.replica.as_str()).collect();
    // Least outstanding would have sent the fourth to b or c (a has 1 in
    // flight, they have 1 and 0); round-robin goes back to a regardless.
    assert_eq!(ids, ["a", "b", "c", "a"]);
    assert_eq!(order[0].how, "round-robin");
    // a is full (2 of 2): its turn passes to the next with room.
    assert_eq!(go(d.admit("m", vec![], now, &mut first)).replica, "b");
    assert_eq!(go(d.admit("m", vec![], now, &mut first)).replica, "c");
    let (_, mut queued, _) = wait(d.admit("m", vec![], now, &mut first));
    d.release("m", "b", now, &mut first);
    assert_eq!(
        queued.try_recv().unwrap().replica,
        "b",
        "the queue took b's room"
    );
}

#[test]
fn without_a_spec_limit_a_replica_waits_for_its_engine_slots_then_takes_that_many() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 8, Routing::LeastOutstanding);
    let queries = d.apply_table(&table(&[("m", None, &["a"])]), now, &mut first);
    assert_eq!(
        queries,
        [SlotsQuery {
            model: "m".into(),
            replica: "a".into(),
            address: "a:1".into()
        }]
    );
    // Asked once, not again with every table.
    assert!(d
        .apply_table(&table(&[("m", None, &["a"])]), now, &mut first)
        .is_empty());
    let (_, mut rx, _) = wait(d.admit("m", vec![], now, &mut first));
    d.learn_slots("m", "a", Some(2), now, &mut first);
    assert_eq!(rx.try_recv().unwrap().replica, "a");
    go(d.admit("m", vec![], now, &mut first));
    let (_, mut queued, _) = wait(d.admit("m", vec![], now, &mut first));
    assert_eq!(d.snapshot(now)[0].replicas[0].max_concurrency, 2);
    assert_eq!(
        d.snapshot(now)[0].max_concurrency,
        2,
        "the model's figure is its replica's, not the default 8"
    );
    // A spec limit wins and needs no asking.
    assert!(d
        .apply_table(&table(&[("m", Some(3), &["a", "b"])]), now, &mut first)
        .is_empty());
    assert_eq!(queued.try_recv().unwrap().replica, "b");
    assert_eq!(d.demand(now)["m"].in_flight, 3);
}

#[test]
fn an_engine_that_cannot_say_gets_the_default_and_a_gone_replica_is_forgotten() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 3, Routing::LeastOutstanding);
    d.apply_table(&table(&[("m", None, &["a", "b"])]), now, &mut first);
    d.learn_slots("m", "a", None, now, &mut first);
    for _ in 0..3 {
        assert_eq!(go(d.admit("m", vec![], now, &mut first)).replica, "a");
    }
    // b left while being asked: its late answer changes nothing.
    d.apply_table(&table(&[("m", None, &["a"])]), now, &mut first);
    d.learn_slots("m", "b", Some(5), now, &mut first);
    wait(d.admit("m", vec![], now, &mut first));
    // Back in the table, it is asked again.
    let q = d.apply_table(&table(&[("m", None, &["a", "b"])]), now, &mut first);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].replica, "b");
}

#[test]
fn a_replica_that_left_the_table_gets_nothing_new_but_its_count_ends_right() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 4, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["old"])]), now);
    let g = go(d.admit("m", vec![], now, &mut first));
    // "old" retires: the coordinator drops it from the table.
    apply(&mut d, &table(&[("m", None, &["new"])]), now);
    for _ in 0..4 {
        assert_eq!(go(d.admit("m", vec![], now, &mut first)).replica, "new");
    }
    d.release("m", &g.replica, now, &mut first);
    assert_eq!(d.demand(now)["m"].in_flight, 4);
}

#[test]
fn a_queue_behind_a_failed_only_replica_moves_when_its_cooldown_ends() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 4, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["a"])]), now);
    assert_eq!(d.cooldown_end("m"), None);
    let g = go(d.admit("m", vec![], now, &mut first));
    d.mark_failed("m", "a", now);
    d.release("m", &g.replica, now, &mut first);
    // The retry waits: the one replica is cooling down, with room.
    let (_, mut rx, _) = wait(d.admit("m", vec![], now, &mut first));
    let end = d.cooldown_end("m").expect("a is cooling down");
    assert_eq!(end, now + FAILED_COOLDOWN);
    d.serve_queue("m", end - Duration::from_millis(1), &mut first);
    assert!(rx.try_recv().is_err(), "not before the cooldown ends");
    d.serve_queue("m", end + Duration::from_millis(1), &mut first);
    assert_eq!(rx.try_recv().unwrap().replica, "a");
}

#[test]
fn a_failed_replica_is_passed_over_for_a_while() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 4, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &["a", "b"])]), now);
    d.mark_failed("m", "a", now);
    for _ in 0..3 {
        let g = go(d.admit("m", vec![], now, &mut first));
        assert_eq!(g.replica, "b");
        d.release("m", &g.replica, now, &mut first);
    }
    let later = now + FAILED_COOLDOWN + Duration::from_millis(1);
    assert_eq!(go(d.admit("m", vec![], later, &mut first)).replica, "a");
}

#[test]
fn a_deleted_model_drops_its_waiters() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 1, Routing::LeastOutstanding);
    apply(&mut d, &table(&[("m", None, &[])]), now);
    let (_, mut rx, _) = wait(d.admit("m", vec![], now, &mut first));
    d.apply_table(&RoutingTable::default(), now, &mut first);
    assert!(matches!(
        rx.try_recv(),
        Err(oneshot::error::TryRecvError::Closed)
    ));
    assert!(d.demand(now).is_empty());
}

#[test]
fn with_prefix_routing_a_shared_prompt_sticks_to_one_replica_until_it_is_busy() {
    let now = Instant::now();
    let mut d = Dispatcher::new(10, 100, Routing::Prefix { imbalance: 2 });
    apply(&mut d, &table(&[("m", None, &["a", "b", "c"])]), now);
    let tenant = prefix_hashes(&"You are the billing assistant. ".repeat(20));
    let g = go(d.admit("m", tenant.clone(), now, &mut first));
    assert_eq!(g.how, "prefix-hash");
    d.release("m", &g.replica, now, &mut first);
    // The same prompt again: the replica that saw it, as long as it is not
    // more than 2 requests busier than the least busy one.
    let mut held = Vec::new();
    for _ in 0..3 {
        let again = go(d.admit("m", tenant.clone(), now, &mut first));
        assert_eq!(
            (again.replica.as_str(), again.how),
            (g.replica.as_str(), "prefix-hit")
        );
        held.push(again);
    }
    let spill = go(d.admit("m", tenant.clone(), now, &mut first));
    assert_ne!(
        spill.replica, g.replica,
        "3 over the least busy: balanced by load"
    );
    // Without a prompt the policy falls back to load.
    assert_eq!(go(d.admit("m", vec![], now, &mut first)).how, "load");
}
