//! gpufleet as Prometheus sees it, with the real tools: `promtool check
//! metrics` on the agent's and the coordinator's `/metrics`, and a real
//! Prometheus discovering replicas through `/v1/endpoints` (http_sd) while a
//! model scales down. Both need Debian's `prometheus` package (.ci/run
//! installs it); without it they say SKIPPED and pass.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    if path.is_empty() {
        eprintln!(
            "SKIPPED: {name} is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        return None;
    }
    Some(path)
}

fn get(port: u16, path: &str) -> String {
    let (status, body) = http("GET", port, path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A fleet with a ready demo replica and a warm entry, so the replica, GPU
/// join and warm families all have series.
fn fleet_with_a_replica(h: &Harness, replicas: u32, extra: &str) -> (Proc, Proc) {
    let c = h.coordinator(extra);
    let a = h.agent("node-a", 2, "");
    h.wait_ready_nodes(1);
    h.apply(&h.model_spec(
        "scraped",
        4,
        &format!("replicas = {replicas}"),
        &demo_command(&[]),
        "",
    ));
    wait_until(Duration::from_secs(60), "replicas ready", || {
        let r = h.try_json(&["replica", "ls"])?;
        let ready = r
            .as_array()?
            .iter()
            .filter(|r| r["state"] == "ready")
            .count();
        (ready == replicas as usize).then_some(())
    });
    (c, a)
}

#[test]
fn promtool_finds_nothing_to_fix_on_the_agent_or_the_coordinator() {
    let h = Harness::new();
    let (_c, a) = fleet_with_a_replica(&h, 1, "");
    let agent = get(a.http_port, "/metrics");
    assert!(
        agent.contains("gpufleet_gpu_replica_info{"),
        "the GPU-to-replica join is exported: {agent}"
    );
    let coordinator = get(h.http_port, "/metrics");
    assert_promtool_accepts(&agent, "agent");
    assert_promtool_accepts(&coordinator, "coordinator");
    // dcgm-exporter's families, its camelCase labels included, are served
    // apart for dashboards built for it.
    let dcgm = get(a.http_port, "/metrics/dcgm");
    assert!(
        dcgm.contains("DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\""),
        "{dcgm}"
    );
    assert!(dcgm.contains("modelName=\""), "{dcgm}");
}

/// GET from Prometheus over HTTP/1.0 (so Go answers without chunking);
/// None until it listens and answers 200.
fn prom_get(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Prometheus' `up` for every series of the replica, as (time, value).
fn up_samples(prom_port: u16, replica: &str) -> Vec<(f64, String)> {
    let query = format!("up{{replica=\"{replica}\"}}[5m]");
    let path = format!("/api/v1/query?query={}", urlencode(&query));
    let v = prom_get(prom_port, &path).expect("Prometheus answers queries");
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["values"].as_array().cloned().unwrap_or_default())
        .map(|pair| {
            (
                pair[0].as_f64().unwrap(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_never_sees_a_scaled_down_replica_down() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    // The rule the defaults follow, at test speed: a retiring replica runs on
    // for longer than http_sd's refresh plus a scrape (75s vs 60s + 10s by
    // default; 8s vs 3s + 1s here).
    let h = Harness::new();
    let (_c, _a) = fleet_with_a_replica(&h, 2, "retire_grace = \"8s\"\n");
    let prom_port = free_port();
    let config = h.write(
        "prometheus.yml",
        &format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: replicas
    http_sd_configs:
      - url: http://127.0.0.1:{}/v1/endpoints
        refresh_interval: 3s
    relabel_configs:
      # Replicas on their way out: stop scraping them before they stop.
      - source_labels: [__meta_gpufleet_state]
        regex: retiring
        action: drop
"#,
            h.http_port
        ),
    );
    let data = h.path("prometheus-data");
    let _prom = spawn_program(
        &h,
        "prometheus",
        &prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
    );

    // Both replicas are scraped, each with its node and replica labels.
    let targets = wait_until(Duration::from_secs(60), "two replicas up", || {
        let v = prom_get(prom_port, "/api/v1/targets?state=active")?;
        let active = v["data"]["activeTargets"].as_array()?.clone();
        (active.len() == 2 && active.iter().all(|t| t["health"] == "up")).then_some(active)
    });
    for t in &targets {
        assert_eq!(t["labels"]["node"], "node-a", "{t}");
        assert_eq!(t["labels"]["model"], "scraped", "{t}");
        assert!(
            t["labels"]["replica"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{t}"
        );
        assert!(t["labels"]["gpus"].is_string(), "{t}");
    }

    let scaled = h.cli(&["model", "scale", "scraped", "--replicas", "1"]);
    assert!(scaled.status.success(), "{}", stderr(&scaled));
    // The retired replica stops 8s after it is marked; watch a few
    // scrapes and refreshes past that.
    let gone = wait_until(Duration::from_secs(60), "one replica left", || {
        let r = h.try_json(&["replica", "ls"])?;
        let left: Vec<String> = r
            .as_array()?
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect();
        (left.len() == 1).then_some(left)
    });
    std::thread::sleep(Duration::from_secs(6));
    let retired: Vec<String> = targets
        .iter()
        .map(|t| t["labels"]["replica"].as_str().unwrap().to_string())
        .filter(|r| !gone.contains(r))
        .collect();
    assert_eq!(retired.len(), 1, "{targets:?} vs {gone:?}");
    let samples = up_samples(prom_port, &retired[0]);
    assert!(samples.len() >= 3, "Prometheus scraped it: {samples:?}");
    assert!(
        samples.iter().all(|(_, v)| v == "1"),
        "up == 0 for the retired replica {}: {samples:?}",
        retired[0]
    );
}
