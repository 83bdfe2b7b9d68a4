//! Several coordinators on a real etcd (started here on loopback, data on
//! /dev/shm): a leader killed or paused hands over, agents follow the new
//! leader, and no replica is stopped, restarted or moved on the way.

mod common;

use std::time::Duration;

use common::*;
use gpufleet::etcd::server::LocalEtcd;

struct Coord {
    name: String,
    url: String,
    http: u16,
    proc: Proc,
}

/// A coordinator on `etcd` under `prefix`, with short windows and a 3 s lease.
fn coordinator(h: &Harness, etcd: &LocalEtcd, name: &str, prefix: &str) -> Coord {
    coordinator_on(h, &[etcd], name, prefix)
}

/// A coordinator on every member of an etcd cluster.
fn coordinator_on(h: &Harness, members: &[&LocalEtcd], name: &str, prefix: &str) -> Coord {
    coordinator_in(h, members, name, prefix, "127.0.0.1", None)
}

/// A coordinator listening on `host`, run inside the network namespace
/// `netns` when one is named.
fn coordinator_in(
    h: &Harness,
    members: &[&LocalEtcd],
    name: &str,
    prefix: &str,
    host: &str,
    netns: Option<&str>,
) -> Coord {
    let endpoints = members
        .iter()
        .map(|m| format!("\"{}\"", m.client_url))
        .collect::<Vec<_>>()
        .join(", ");
    // One etcd: 3 s leases keep the tests short. Several: the default 5 s,
    // which outlasts the 1–2 s a cluster takes to elect a new raft leader.
    let ttl = if members.len() > 1 { 5 } else { 3 };
    let (grpc, http) = (free_port(), free_port());
    let cfg = h.write(
        &format!("{name}.toml"),
        &format!(
            "listen = \"{host}:{grpc}\"\nhttp_listen = \"{host}:{http}\"\ndata_dir = \"{}\"\ntick = \"200ms\"\nnode_suspect_after = \"2s\"\nnode_lost_after = \"4s\"\nreconnect_grace = \"10s\"\nretire_grace = \"3s\"\n[store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nprefix = \"{prefix}\"\nname = \"{name}\"\nlease_ttl = \"{ttl}s\"\n",
            h.path(&format!("{name}-data")).display(),
        ),
    );
    let args = ["coordinator", "--config", cfg.to_str().unwrap()];
    let proc = match netns {
        None => h.spawn(name, &args),
        Some(ns) => {
            let bin = env!("CARGO_BIN_EXE_gpufleet");
            spawn_program(
                h,
                name,
                "ip",
                &[&["netns", "exec", ns, bin][..], &args].concat(),
            )
        }
    };
    Coord {
        name: name.into(),
        url: format!("http://{host}:{grpc}"),
        http,
        proc,
    }
}

fn urls(cs: &[&Coord]) -> String {
    cs.iter()
        .map(|c| c.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `coordinator status -o json` through the list.
fn status(list: &str) -> Option<serde_json::Value> {
    json_at(list, &["coordinator", "status"])
}

/// Waits for a leader other than `not` (by name); its name and epoch.
fn leader(list: &str, not: Option<&str>) -> (String, u64) {
    wait_until(Duration::from_secs(20), "a leader", || {
        let s = status(list)?;
        let name = s["leader"].as_str()?.to_string();
        (!name.is_empty() && Some(name.as_str()) != not).then_some(())?;
        Some((name, s["epoch"].as_u64()?))
    })
}

/// The model's ready replicas as (id, node, pid), sorted.
fn replicas(list: &str, model: &str) -> Option<Replicas> {
    let rs = json_at(list, &["replica", "ls", "--model", model])?;
    let mut out: Vec<(String, String, i64)> = rs
        .as_array()?
        .iter()
        .filter(|r| r["state"] == "ready")
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["node"].as_str().unwrap_or("").to_string(),
                r["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

/// Every node connected (to whoever answers through `list`).
fn all_connected(list: &str, n: usize) -> Option<()> {
    let nodes = json_at(list, &["node", "ls"])?;
    let nodes = nodes.as_array()?;
    (nodes.len() == n
        && nodes
            .iter()
            .all(|n| n["connected"] == true && n["state"] == "ready"))
    .then_some(())
}

type Replicas = Vec<(String, String, i64)>;

/// Two replicas of a demo model served on two agents: the agents and the
/// replicas.
fn fleet_with_replicas(h: &Harness, list: &str) -> (Vec<Proc>, Replicas) {
    let agents = format!(
        "coordinator = [{}]",
        list.split(',')
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let procs = ["node-a", "node-b"]
        .iter()
        .map(|n| h.agent(n, 1, &agents))
        .collect();
    wait_until(Duration::from_secs(30), "two connected nodes", || {
        all_connected(list, 2)
    });
    // Autoscaled, and running above its minimum: a new leader must start
    // from the two replicas it adopts, not walk to the minimum from 0 (the
    // scale-down delay is long and fixed, so nothing else lowers it here).
    let spec = h.model_spec(
        "steady",
        1,
        "[scaling]\nmin_replicas = 1\nmax_replicas = 2\nscale_down_delay = \"10m\"\nscale_down_hold_factor = 0",
        &demo_command(&[]),
        "",
    );
    let out = cli_at(list, &["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_at(list, &["model", "scale", "steady", "--replicas", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ready = wait_until(Duration::from_secs(40), "two ready replicas", || {
        replicas(list, "steady").filter(|r| r.len() == 2)
    });
    let out = cli_at(list, &["model", "scale", "steady", "--auto"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(10), "the autoscaler holding 2", || {
        let m = json_at(list, &["model", "show", "steady"])?;
        (m["pinned_replicas"].is_null() && m["desired_replicas"] == 2).then_some(())
    });
    (procs, ready)
}

/// Holds the replicas still for `secs` (through the new leader's reconnect
/// grace and beyond): same ids, same processes, all alive.
fn replicas_stay(list: &str, before: &Replicas, secs: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if let Some(now) = replicas(list, "steady") {
            if !now.is_empty() {
                assert_eq!(
                    &now,
                    before,
                    "replicas changed across the failover: {:?}",
                    json_at(list, &["replica", "ls", "--model", "steady"])
                );
            }
        }
        for (_, _, pid) in before {
            assert!(pid_alive(*pid), "replica process {pid} died");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Two coordinators on a fresh etcd under `prefix`, one of them leading,
/// and the two-replica fleet on them.
struct Pair {
    cs: [Coord; 2],
    list: String,
    first: String,
    epoch: u64,
    agents: Vec<Proc>,
    before: Replicas,
    h: Harness,
    _etcd: LocalEtcd,
}

impl Pair {
    /// None (SKIPPED) without etcd.
    fn start(prefix: &str) -> Option<Pair> {
        let etcd = LocalEtcd::start_or_skip()?;
        let h = Harness::new();
        let cs = [
            coordinator(&h, &etcd, "c1", prefix),
            coordinator(&h, &etcd, "c2", prefix),
        ];
        let list = urls(&cs.iter().collect::<Vec<_>>());
        let (first, epoch) = leader(&list, None);
        let (agents, before) = fleet_with_replicas(&h, &list);
        Some(Pair {
            cs,
            list,
            first,
            epoch,
            agents,
            before,
            h,
            _etcd: etcd,
        })
    }

    /// The leader's index, and the other's.
    fn leader_at(&self) -> (usize, usize) {
        let at = self.cs.iter().position(|c| c.name == self.first).unwrap();
        (at, 1 - at)
    }
}

/// Waits for `c` to log that it stepped down.
fn stepped_down(c: &Coord) {
    wait_until(
        Duration::from_secs(10),
        "the woken leader to step down",
        || c.proc.log_text().contains("stepped down").then_some(()),
    );
}

#[test]
fn kill_9_of_the_leader_hands_over_and_no_replica_is_touched() {
    let Some(Pair {
        mut cs,
        list,
        first,
        epoch,
        agents,
        before,
        h: _h,
        _etcd: _e,
    }) = Pair::start("/ha1")
    else {
        return;
    };

    let other = if first == "c1" { "c2" } else { "c1" };
    let mut want = vec![
        (first.clone(), "leader".to_string()),
        (other.to_string(), "follower".to_string()),
    ];
    want.sort();
    // A member whose lease a loaded machine let lapse is listed again once
    // it renews: wait for both, rather than read one instant.
    let s = wait_until(Duration::from_secs(15), "both members listed", || {
        let s = status(&list)?;
        let mut roles: Vec<(String, String)> = s["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().into(),
                    m["role"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        roles.sort();
        (roles == want).then_some(s)
    });
    assert_eq!(s["leader"], first.as_str(), "{s}");
    assert_eq!(s["store"][0]["healthy"], true, "{s}");

    let follower = cs.iter().find(|c| c.name != first).unwrap();
    let (code, body) = http("GET", follower.http, "/healthz", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("follower") && body.contains(&first), "{body}");
    // A CLI given only the follower's URL is refused there (nothing run)
    // and the call goes on to the leader the refusal names.
    let out = cli_at(
        &follower.url,
        &["model", "scale", "steady", "--replicas", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = json_at(&follower.url, &["model", "show", "steady"]).expect("shown via the leader");
    assert_eq!(shown["pinned_replicas"], 2, "{shown}");

    let at = cs.iter().position(|c| c.name == first).unwrap();
    cs[at].proc.kill9();
    // A write sent at once is held through the election (up to 15 s; the
    // lease here is 3 s) and reaches the new leader.
    let out = cli_at(&list, &["model", "scale", "steady", "--replicas", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (second, epoch2) = leader(&list, Some(&first));
    assert!(epoch2 > epoch, "a new epoch: {epoch} then {epoch2}");
    let survivor = cs.iter().find(|c| c.name == second).unwrap();
    let (code, body) = http("GET", survivor.http, "/healthz", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader"), "{body}");

    let t = std::time::Instant::now();
    while all_connected(&survivor.url, 2).is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            for a in &agents {
                eprintln!("AGENT LOG\n{}", a.log_text());
            }
            eprintln!("SURVIVOR LOG\n{}", survivor.proc.log_text());
            eprintln!("NODES {:?}", json_at(&survivor.url, &["node", "ls"]));
            panic!("agents not attached");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    replicas_stay(&survivor.url, &before, 12);
    let log = survivor.proc.log_text();
    assert!(log.contains("elected leader"), "{log}");
}

#[test]
fn a_paused_leader_wakes_deposed_and_changes_nothing() {
    let Some(p) = Pair::start("/ha2") else {
        return;
    };
    let (at, other_at) = p.leader_at();
    let (paused, other, first, before) = (&p.cs[at], &p.cs[other_at], &p.first, &p.before);

    paused.proc.signal(libc::SIGSTOP);
    let (second, _) = leader(&other.url, Some(first));
    assert_eq!(second, other.name);
    // The agents' sessions with the paused leader end when HTTP/2
    // keepalive gives up on it (5 s + 10 s).
    wait_until(
        Duration::from_secs(40),
        "agents attached to the new leader",
        || all_connected(&other.url, 2),
    );
    paused.proc.signal(libc::SIGCONT);
    stepped_down(paused);
    let (code, body) = http("GET", paused.http, "/healthz", "");
    assert!(
        code == 503 || body.contains("follower"),
        "the woken coordinator no longer leads: {code} {body}"
    );
    replicas_stay(&other.url, before, 8);
    let s = status(&other.url).unwrap();
    assert_eq!(s["leader"], other.name.as_str(), "{s}");
}

/// A leader paused past its lease but not past its agents' HTTP/2
/// keepalive wakes with their sessions still open. Those agents never met
/// the new leader, so their epoch fence cannot refuse what it sends: it
/// must notice on waking that its term is over (its deadline is long past)
/// and change nothing, and the agents move to the new leader.
#[test]
fn a_leader_woken_before_its_agents_noticed_changes_nothing() {
    let Some(p) = Pair::start("/ha7") else {
        return;
    };
    let (at, other_at) = p.leader_at();
    let (paused, other) = (&p.cs[at], &p.cs[other_at]);

    paused.proc.signal(libc::SIGSTOP);
    leader(&other.url, Some(&p.first));
    assert!(
        all_connected(&other.url, 2).is_none(),
        "the agents are still with the paused leader when it wakes"
    );
    paused.proc.signal(libc::SIGCONT);
    stepped_down(paused);
    wait_until(
        Duration::from_secs(30),
        "agents attached to the new leader",
        || all_connected(&other.url, 2),
    );
    replicas_stay(&other.url, &p.before, 8);
    // Nothing started beside them either (in any state).
    let all = json_at(&other.url, &["replica", "ls", "--model", "steady"]).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
}

#[test]
fn etcd_down_longer_than_a_lease_stops_the_leader_not_the_replicas() {
    let Some(mut etcd) = LocalEtcd::start_or_skip() else {
        return;
    };
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let c = coordinator(&h, &etcd, "c1", "/ha3");
    leader(&c.url, None);
    let (_agents, before) = fleet_with_replicas(&h, &c.url);

    etcd.stop();
    wait_until(Duration::from_secs(15), "the leader to step down", || {
        let (code, body) = try_http("GET", c.http, "/healthz", "", "")?;
        (code == 503 && body.contains("no-leader")).then_some(())
    });
    for (_, _, pid) in &before {
        assert!(pid_alive(*pid), "replica {pid} stopped while etcd was away");
    }
    etcd.restart().unwrap();
    leader(&c.url, None);
    wait_until(Duration::from_secs(20), "agents attached again", || {
        all_connected(&c.url, 2)
    });
    replicas_stay(&c.url, &before, 6);
}

#[test]
fn sigterm_of_the_leader_revokes_its_lease_and_a_follower_leads() {
    let Some(etcd) = LocalEtcd::start_or_skip() else {
        return;
    };
    let h = Harness::new();
    let mut cs = [
        coordinator(&h, &etcd, "c1", "/ha4"),
        coordinator(&h, &etcd, "c2", "/ha4"),
    ];
    let list = urls(&cs.iter().collect::<Vec<_>>());
    let (first, epoch) = leader(&list, None);
    let at = cs.iter().position(|c| c.name == first).unwrap();
    assert_eq!(cs[at].proc.stop(Duration::from_secs(10)), Some(0));
    assert!(
        cs[at].proc.log_text().contains("lease revoked"),
        "{}",
        cs[at].proc.log_text()
    );
    let other = &cs[1 - at];
    let (second, epoch2) = leader(&other.url, Some(&first));
    assert_eq!(
        (second.as_str(), epoch2 > epoch),
        (other.name.as_str(), true)
    );
    // The stopped coordinator left no member key behind.
    let s = status(&other.url).unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 1, "{s}");
}

/// A 3-member etcd: one member down is nothing (the client moves to the
/// next endpoint); two down is a lost quorum: the leader steps down within
/// its lease, agents keep their replicas, and all comes back with quorum.
#[test]
fn a_3_member_etcd_losing_one_then_its_quorum() {
    let Some(mut members) = LocalEtcd::cluster_or_skip(3) else {
        return;
    };
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let c = coordinator_on(&h, &members.iter().collect::<Vec<_>>(), "c1", "/ha5");
    let (_agents, before) = fleet_with_replicas(&h, &c.url);
    // The term the member's loss must not end (read now: a cluster just
    // formed may still move its raft leader while the fleet starts).
    let (_, epoch) = leader(&c.url, None);
    let leads = |c: &Coord| {
        try_http("GET", c.http, "/healthz", "", "").is_some_and(|(_, b)| b.starts_with("ok leader"))
    };

    // One member away (the first endpoint, which the client used first).
    members[0].stop();
    std::thread::sleep(Duration::from_secs(6));
    wait_until(
        Duration::from_secs(10),
        "the coordinator to lead on two members",
        || leads(&c).then_some(()),
    );
    assert_eq!(
        leader(&c.url, None).1,
        epoch,
        "the same term went on: the client moved to the other endpoints\n{}",
        c.proc.log_text()
    );
    replicas_stay(&c.url, &before, 2);

    // A second one: no quorum, no leader; the replicas keep running.
    members[1].stop();
    wait_until(Duration::from_secs(15), "the leader to step down", || {
        let (code, body) = try_http("GET", c.http, "/healthz", "", "")?;
        (code == 503 && body.contains("no-leader")).then_some(())
    });
    for (_, _, pid) in &before {
        assert!(pid_alive(*pid), "replica {pid} stopped without quorum");
    }

    members[0].relaunch().unwrap();
    members[1].relaunch().unwrap();
    wait_until(
        Duration::from_secs(30),
        "a leader once quorum is back",
        || leads(&c).then_some(()),
    );
    wait_until(Duration::from_secs(20), "agents attached again", || {
        all_connected(&c.url, 2)
    });
    replicas_stay(&c.url, &before, 4);
}

/// A private network for one test. The calling thread moves into a new
/// network namespace (its own loopback; every process the test starts from
/// it, etcd and agents included, inherits it), joined by a veth pair to a
/// second, named namespace for the coordinator that is to be cut off. etcd
/// listens on a second address of the near side, which the far side loses
/// to a blackhole route while agents still reach it over the first.
struct Partition {
    netns: String,
}

/// The near side's address (agents' source), the far side's, etcd's.
const NEAR: &str = "10.213.17.1";
const FAR: &str = "10.213.17.2";
const ETCD_AT: &str = "10.213.17.3";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    out.status.success().then_some(()).ok_or_else(|| {
        format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

impl Partition {
    fn make_or_skip() -> Option<Partition> {
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: the partition test makes network namespaces, which needs root");
            return None;
        }
        if ip(&["-V"]).is_err() {
            println!("SKIPPED: the partition test needs `ip` (Debian package iproute2)");
            return None;
        }
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            println!(
                "SKIPPED: cannot make a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let pid = std::process::id();
        let p = Partition {
            netns: format!("gpufleet-ha-{pid}"),
        };
        let (near, far) = (format!("gfha{pid}a"), format!("gfha{pid}b"));
        ip(&["link", "set", "lo", "up"]).unwrap();
        ip(&["netns", "add", &p.netns]).unwrap();
        ip(&[
            "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &p.netns,
        ])
        .unwrap();
        for addr in [NEAR, ETCD_AT] {
            ip(&["addr", "add", &format!("{addr}/24"), "dev", &near]).unwrap();
        }
        ip(&["link", "set", &near, "up"]).unwrap();
        p.far(&["link", "set", "lo", "up"]);
        p.far(&["addr", "add", &format!("{FAR}/24"), "dev", &far]);
        p.far(&["link", "set", &far, "up"]);
        Some(p)
    }

    /// `ip ARGS` in the far namespace.
    fn far(&self, args: &[&str]) {
        ip(&[&["netns", "exec", &self.netns, "ip"][..], args].concat()).unwrap();
    }

    /// The far side loses etcd (and only etcd).
    fn cut(&self) {
        self.far(&["route", "add", "blackhole", &format!("{ETCD_AT}/32")]);
    }

    fn heal(&self) {
        self.far(&["route", "del", "blackhole", &format!("{ETCD_AT}/32")]);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// When `line_part` first appears in a log, from its RFC 3339 timestamp.
fn logged_at(log: &str, line_part: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(line_part))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// The leader cut from etcd (but not from its agents) steps down on its own
/// before anyone else can lead; the other coordinator leads, the agents
/// follow it, no replica is touched, and the healed one follows.
#[test]
fn a_leader_partitioned_from_etcd_steps_down_before_another_leads() {
    // On a thread of its own: the network namespace it moves into must not
    // outlive the test on a reused thread.
    std::thread::spawn(partitioned_leader)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn partitioned_leader() {
    let Some(net) = Partition::make_or_skip() else {
        return;
    };
    let Some(etcd) = LocalEtcd::start_or_skip_on(ETCD_AT) else {
        return;
    };
    let h = Harness::new();
    let _reaper = Reaper::new(&h);
    let far = coordinator_in(&h, &[&etcd], "c1", "/ha6", FAR, Some(&net.netns));
    // c1 leads first: the other starts once it does.
    let (first, epoch) = leader(&far.url, None);
    assert_eq!(first, "c1");
    let near = coordinator_in(&h, &[&etcd], "c2", "/ha6", "127.0.0.1", None);
    let list = urls(&[&far, &near]);
    wait_until(Duration::from_secs(20), "c2 to follow", || {
        let s = status(&near.url)?;
        (s["members"].as_array()?.len() == 2).then_some(())
    });
    let (_agents, before) = fleet_with_replicas(&h, &list);

    net.cut();
    let (second, epoch2) = leader(&near.url, Some("c1"));
    assert_eq!((second.as_str(), epoch2 > epoch), ("c2", true));
    wait_until(Duration::from_secs(10), "c1 to log its step-down", || {
        far.proc.log_text().contains("stepped down").then_some(())
    });
    // Never two leaders: c1 gave up before c2 could win (RFC 3339 UTC
    // timestamps of one clock compare as strings).
    let down = logged_at(&far.proc.log_text(), "stepped down").unwrap();
    let won = logged_at(&near.proc.log_text(), "elected leader").unwrap();
    assert!(down < won, "c1 stepped down at {down}, c2 led from {won}");
    wait_until(
        Duration::from_secs(30),
        "agents attached to the new leader",
        || all_connected(&near.url, 2),
    );
    replicas_stay(&near.url, &before, 6);

    net.heal();
    wait_until(
        Duration::from_secs(30),
        "the healed coordinator to follow",
        || {
            let s = status(&near.url)?;
            let roles = s["members"].as_array()?;
            roles
                .iter()
                .any(|m| m["name"] == "c1" && m["role"] == "follower")
                .then_some(())
        },
    );
    assert_eq!(status(&list).unwrap()["leader"], "c2");
    replicas_stay(&near.url, &before, 2);
}

#[test]
fn an_unreachable_etcd_at_start_is_named() {
    let h = Harness::new();
    let port = free_port();
    let cfg = h.write(
        "c.toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:{port}\"]\n",
            free_port(),
            free_port()
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .args(["coordinator", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("unreachable"),
        "{err}"
    );
}

/// The agent-side fence's case: agents that met the new leader dial the
/// deposed one (the new leader died; the deposed one is paused, its kernel
/// queues their connections) and it wakes with their sessions waiting. It
/// must hand them nothing they accept: it refuses the session (it notices
/// its lapsed term first) or the agent refuses its assignment's lower epoch.
/// Only after it wins a new term may they attach to it.
#[test]
fn a_deposed_leader_woken_with_sessions_waiting_hands_out_nothing() {
    let Some(mut p) = Pair::start("/ha8") else {
        return;
    };
    let (old, new) = p.leader_at();
    let (cs, first, agents, before) = (&mut p.cs, &p.first, &p.agents, &p.before);
    let (old_url, new_url) = (cs[old].url.clone(), cs[new].url.clone());

    cs[old].proc.signal(libc::SIGSTOP);
    let (second, epoch2) = leader(&new_url, Some(first));
    wait_until(
        Duration::from_secs(40),
        "agents attached to the new leader",
        || all_connected(&new_url, 2),
    );
    cs[new].proc.kill9();
    // The agents dial the paused one; their sessions wait in its kernel.
    std::thread::sleep(Duration::from_millis(2500));
    let seen: Vec<usize> = agents.iter().map(|a| a.log_text().len()).collect();
    cs[old].proc.signal(libc::SIGCONT);
    let (_, epoch3) = leader(&old_url, Some(&second));
    assert!(epoch3 > epoch2, "a new term: {epoch2} then {epoch3}");
    wait_until(Duration::from_secs(30), "agents attached again", || {
        all_connected(&old_url, 2)
    });
    let relected = logged_at(&cs[old].proc.log_text(), &format!("epoch={epoch3}")).unwrap();
    for (a, from) in agents.iter().zip(seen) {
        let log = a.log_text();
        // The agent's word on the woken one until it led again.
        let words: Vec<&str> = log[from..]
            .lines()
            .filter(|l| l.contains(&old_url))
            .filter(|l| l.split_whitespace().next().unwrap_or("") < relected.as_str())
            .collect();
        assert!(
            !words.is_empty(),
            "the agent never dialled {old_url}: {log}"
        );
        // A session it opened there must end in the epoch refusal.
        let mut open = false;
        for w in &words {
            if w.contains("refused an assignment of epoch") {
                open = false;
            } else if open {
                panic!("a session with the deposed leader went on: {words:#?}");
            } else {
                open = w.contains("connected to the coordinator");
            }
        }
        assert!(
            !open,
            "an assignment of the deposed leader was taken: {words:#?}"
        );
        eprintln!("{}: {words:#?}", a.name);
    }
    replicas_stay(&old_url, before, 4);
}
