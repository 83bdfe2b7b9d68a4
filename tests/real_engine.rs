//! gpufleet against an engine it did not write: the real llama.cpp server
//! (`llama-server`) with a tiny Llama model on CPU, run as `gpus = 0`
//! replicas by a real coordinator and agent. Looks for the engine in
//! `../shared/engines` (or `LLAMA_SERVER` / `LLAMA_MODEL`); in CI a missing
//! engine fails the test, elsewhere it is skipped loudly.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The engine and model, or why they cannot be used.
struct Engine {
    server: PathBuf,
    model: PathBuf,
}

fn engine() -> Option<Engine> {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/engines");
    let pick = |var: &str, file: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| shared.join(file))
    };
    let server = pick("LLAMA_SERVER", "llama-server");
    let model = pick("LLAMA_MODEL", "tiny-llama.gguf");
    let runs = std::process::Command::new(&server)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let why = if !model.is_file() {
        format!("no model at {}", model.display())
    } else if !runs {
        format!("{} does not run here", server.display())
    } else {
        return Some(Engine { server, model });
    };
    if std::env::var_os("CI").is_some() {
        panic!("the real-engine tests must run in CI: {why}");
    }
    eprintln!("SKIPPED: real llama.cpp engine tests: {why} (set LLAMA_SERVER and LLAMA_MODEL)");
    None
}

/// Copies the model under the agents' model root and writes a spec for it:
/// `server_args` after the fixed ones, `scaling` as the `[scaling]` table.
fn llama_spec(h: &Harness, e: &Engine, name: &str, server_args: &str, scaling: &str) -> PathBuf {
    let weights = h.path(&format!("models/{name}/tiny-llama.gguf"));
    std::fs::create_dir_all(weights.parent().unwrap()).unwrap();
    std::fs::copy(&e.model, &weights).unwrap();
    h.write(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nweights = \"{}\"\n[server]\npreset = \"llamacpp\"\ncommand = [\"{}\", \"-m\", \"{{weights}}\", \"--host\", \"127.0.0.1\", \"--port\", \"{{port}}\", \"-c\", \"1024\", \"-t\", \"1\"{server_args}]\ngpus = 0\ncpu = 0.5\nmemory = \"128MiB\"\nready_timeout = \"60s\"\nstop_timeout = \"5s\"\n[scaling]\n{scaling}\n",
            weights.display(),
            e.server.display()
        ),
    )
}

fn ready(h: &Harness, model: &str, n: usize) -> Option<Vec<serde_json::Value>> {
    let rs = h.replicas_of(model);
    let ready: Vec<_> = rs.into_iter().filter(|r| r["state"] == "ready").collect();
    (ready.len() == n).then_some(ready)
}

fn events(h: &Harness, model: &str) -> Vec<serde_json::Value> {
    h.try_json(&["events", "--model", model, "--limit", "200"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// One completion of `tokens` tokens from the replica on `port`.
fn complete(port: u16, tokens: u32) -> u16 {
    let body = format!("{{\"prompt\":\"hello\",\"max_tokens\":{tokens}}}");
    http("POST", port, "/v1/completions", &body).0
}

/// `clients` threads each sending completions back to back until stopped.
fn load(port: u16, clients: usize, tokens: u32) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..clients {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                complete(port, tokens);
            }
        });
    }
    stop
}

/// A coordinator and one agent with no GPU, ready.
fn fleet(node: &str) -> (Harness, Proc, Proc) {
    let h = Harness::new();
    let coordinator = h.coordinator("");
    let agent = h.agent(node, 0, "");
    h.wait_ready_nodes(1);
    (h, coordinator, agent)
}

fn alive(pid: i64) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn llama_server_is_scraped_scaled_restarted_and_re_adopted() {
    let Some(e) = engine() else { return };
    let (h, _c, mut agent) = fleet("cpu-a");
    let spec = llama_spec(
        &h,
        &e,
        "llama",
        ", \"--metrics\", \"--parallel\", \"2\"",
        "min_replicas = 1\nmax_replicas = 2\ntarget_ongoing_requests = 1\nstable_window = \"4s\"\npanic_window = \"2s\"\nscale_down_delay = \"2s\"",
    );
    h.apply(&spec);

    // Apply, then ready, with its signals read from the engine's /metrics.
    let r = wait_until(Duration::from_secs(60), "a ready llama replica", || {
        ready(&h, "llama", 1)
    })
    .remove(0);
    let port = r["port"].as_u64().unwrap() as u16;
    wait_until(Duration::from_secs(10), "signals scraped", || {
        let r = ready(&h, "llama", 1)?.remove(0);
        (r["signals_health"] == "ok" && r["signals"]["fresh"] == true).then_some(r)
    });
    // A completion moves the engine's token counters, and the next scrape
    // shows it.
    assert_eq!(complete(port, 4), 200, "the engine serves completions");
    wait_until(Duration::from_secs(10), "activity seen", || {
        let r = ready(&h, "llama", 1)?.remove(0);
        (r["signals"]["activity_total"].as_f64()? > 0.0).then_some(())
    });
    let table = stdout(&h.cli(&["replica", "ls"]));
    assert!(
        table.contains("SIGNALS") && table.contains(" ok "),
        "{table}"
    );

    // Load: four clients on two slots keep about four requests ongoing,
    // twice the target of one per replica.
    let stop = load(port, 4, 48);
    wait_until(Duration::from_secs(40), "a second ready replica", || {
        ready(&h, "llama", 2)
    });
    stop.store(true, Ordering::Relaxed);

    // Idle: back to the minimum once the scale-down delay has passed.
    wait_until(Duration::from_secs(60), "scale-down to 1", || {
        let m = h.model_of("llama")?;
        (m["desired_replicas"] == 1 && m["current_replicas"] == 1).then_some(())
    });
    let r = wait_until(Duration::from_secs(20), "one ready replica", || {
        ready(&h, "llama", 1)
    })
    .remove(0);
    let (id, pid) = (r["id"].clone(), r["pid"].as_i64().unwrap());

    // kill -9 of the engine: the agent restarts it after its backoff.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let r = wait_until(Duration::from_secs(40), "restarted replica", || {
        let r = ready(&h, "llama", 1)?.remove(0);
        (r["pid"].as_i64() != Some(pid) && r["signals_health"] == "ok").then_some(r)
    });
    assert_eq!(r["id"], id);
    assert!(r["restarts"].as_u64().unwrap() >= 1, "{r}");
    let pid = r["pid"].as_i64().unwrap();

    // The agent dies hard: the engine keeps running and is re-adopted.
    agent.kill9();
    assert!(alive(pid), "the engine must outlive its agent");
    agent = h.agent("cpu-a", 0, "");
    let r = wait_until(Duration::from_secs(20), "re-adopted replica", || {
        let r = ready(&h, "llama", 1)?.remove(0);
        (r["pid"].as_i64() == Some(pid) && r["signals_health"] == "ok").then_some(r)
    });
    assert_eq!(r["id"], id);
    drop(agent);
}

#[test]
fn a_trickle_of_short_requests_never_scales_to_zero() {
    let Some(e) = engine() else { return };
    let (h, _c, _a) = fleet("cpu-t");
    let spec = llama_spec(
        &h,
        &e,
        "trickle",
        ", \"--metrics\"",
        "min_replicas = 0\nmax_replicas = 1\nstable_window = \"4s\"\npanic_window = \"2s\"\nscale_down_delay = \"1s\"\nscale_to_zero_after = \"6s\"",
    );
    h.apply(&spec);
    // A model that may scale to zero starts there, until woken.
    let out = h.cli(&["model", "wake", "trickle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = wait_until(Duration::from_secs(60), "a ready replica", || {
        ready(&h, "trickle", 1)
    })
    .remove(0);
    let port = r["port"].as_u64().unwrap() as u16;

    // One one-token completion every 2 s, sent straight to the replica, for
    // three times the idle period: the gauges, sampled between requests,
    // mostly read zero, the token counters do not.
    for i in 0..10 {
        assert_eq!(complete(port, 1), 200, "request {i} was refused");
        std::thread::sleep(Duration::from_secs(2));
        let m = h.model_of("trickle").unwrap();
        assert_eq!(
            m["desired_replicas"], 1,
            "scaled to zero under traffic: {m}"
        );
    }
    // Quiet: now it goes to zero, and says why.
    wait_until(Duration::from_secs(30), "scale to zero", || {
        (h.model_of("trickle")?["desired_replicas"] == 0).then_some(())
    });
    let scale = events(&h, "trickle");
    assert!(
        scale.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("no requests for 6s")),
        "{scale:?}"
    );
}

#[test]
fn a_server_without_metrics_shows_failing_signals_and_an_event() {
    let Some(e) = engine() else { return };
    let (h, _c, agent) = fleet("cpu-m");
    let spec = llama_spec(&h, &e, "blind", "", "min_replicas = 1\nmax_replicas = 1");
    let out = h.cli(&["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning:") && stderr(&out).contains("no --metrics"),
        "apply warns: {}",
        stderr(&out)
    );
    let r = wait_until(Duration::from_secs(60), "failing signals", || {
        let r = ready(&h, "blind", 1)?.remove(0);
        r["signals_health"]
            .as_str()?
            .starts_with("failing:")
            .then_some(r)
    });
    assert_eq!(
        r["signals_health"],
        "failing: HTTP 501, start the engine with --metrics"
    );
    let table = stdout(&h.cli(&["replica", "ls"]));
    assert!(table.contains("failing: HTTP 501"), "{table}");
    // The agent says so too: once at warn level, and in its own metrics.
    let log = agent.log_text();
    assert!(
        log.contains("WARN") && log.contains("metrics scrape failing"),
        "{log}"
    );
    let (_, metrics) = http("GET", agent.http_port, "/metrics", "");
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("gpufleet_replica_scrape_errors_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(errors.is_some_and(|n| n >= 1.0), "{metrics}");
    let ev = events(&h, "blind");
    assert!(
        ev.iter().any(|e| e["kind"] == "signals"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("metrics scrape failing")),
        "{ev:?}"
    );
}
