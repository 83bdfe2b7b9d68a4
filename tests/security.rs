//! Fleet security end to end: `tls init`, mTLS between real agents and a
//! real coordinator (CA, roles, node binding), and the Control API's tokens,
//! driven through the real CLI.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gpufleet::security::tls;
use gpufleet::wire::pb;

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";

const SPEC: &str = r#"
name = "llama-test"
weights = "/srv/models/llama-test"
replicas = 0

[server]
preset = "vllm"
command = ["/bin/sleep", "1000"]
gpus = 1
gpu_memory = "20GiB"
"#;

fn https(h: &Harness) -> String {
    format!("https://127.0.0.1:{}", h.grpc_port)
}

/// `node ls -o json` over TLS, verifying the coordinator with `ca`.
fn nodes_over_tls(h: &Harness, ca: &Path) -> Option<serde_json::Value> {
    let out = h.cli_env(
        &["node", "ls", "-o", "json"],
        &[
            ("GPUFLEET_COORDINATOR", &https(h)),
            ("GPUFLEET_CA", ca.to_str().unwrap()),
        ],
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits for `what` in the log of `p`; on a timeout, shows the log.
fn wait_for_log(p: &Proc, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = p.log_text();
        if log.contains(what) {
            return log;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{} did not log `{what}` within 20s; its log:\n{log}",
                p.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tls_init_writes_private_keys_and_never_overwrites_by_accident() {
    let h = Harness::new();
    let dir = h.path("tls");
    let run = |extra: &[&str]| {
        let mut args = vec!["tls", "init", "--out", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        h.cli_env(&args, &[])
    };
    let first = run(&[
        "--agents",
        "gpu-1,gpu-2",
        "--coordinator-name",
        "coord.example.net,10.0.0.5",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    for stem in ["ca", "coordinator", "gpu-1", "gpu-2"] {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        assert!(std::fs::read_to_string(&cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} must be private", key.display());
    }
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();

    let again = run(&["--agents", "gpu-1"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exist") && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);

    let forced = run(&["--agents", "gpu-1", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
}

#[test]
fn an_agent_with_its_certificate_joins_over_mtls() {
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1");
    let c = h.coordinator(&tls_table(&dir, "coordinator"));
    let _a = h.agent_at("gpu-1", "gpu-1", 2, &https(&h), &tls_table(&dir, "gpu-1"));
    let ca = dir.join("ca.pem");
    wait_until(Duration::from_secs(20), "gpu-1 ready over mTLS", || {
        let nodes = nodes_over_tls(&h, &ca)?;
        (nodes_in_state(&nodes, "ready") == ["gpu-1"]).then_some(())
    });
    assert!(
        c.log_text().contains("Control API is open"),
        "an open Control API is warned about: {}",
        c.log_text()
    );

    let no_ca = h.cli_env(&["node", "ls"], &[("GPUFLEET_COORDINATOR", &https(&h))]);
    assert!(!no_ca.status.success());
    assert!(stderr(&no_ca).contains("GPUFLEET_CA"), "{}", stderr(&no_ca));
    let plain = h.cli_env(&["node", "ls"], &[]);
    assert!(
        !plain.status.success(),
        "plain HTTP/2 must not get through to a TLS port"
    );
}

#[test]
fn certificates_of_another_fleet_are_refused() {
    let h = Harness::new();
    let ours = h.path("ours");
    let theirs = h.path("theirs");
    tls_init(&ours, "gpu-1");
    tls_init(&theirs, "gpu-1");
    let _c = h.coordinator(&tls_table(&ours, "coordinator"));
    // Trusts the other fleet's CA: our coordinator is a stranger to it.
    let a = h.agent_at("a", "gpu-1", 1, &https(&h), &tls_table(&theirs, "gpu-1"));
    // Trusts our CA but holds the other fleet's certificate.
    let mixed = format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ours.join("ca.pem").display(),
        theirs.join("gpu-1.pem").display(),
        theirs.join("gpu-1-key.pem").display()
    );
    let b = h.agent_at("b", "gpu-1", 1, &https(&h), &mixed);
    wait_for_log(&a, "UnknownIssuer");
    let b_log = wait_for_log(&b, "keeping replicas running and retrying");
    assert!(
        !b_log.contains("connected to the coordinator"),
        "a certificate from another CA must not open a session: {b_log}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let nodes = nodes_over_tls(&h, &ours.join("ca.pem")).expect("the CLI still works");
    assert_eq!(nodes.as_array().map(Vec::len), Some(0), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_coordinator_that_shows_an_agent_certificate() {
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1,gpu-2");
    // A TLS server that presents gpu-1's certificate, signed by the right CA.
    let config = {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::pem_file_iter(dir.join("gpu-1.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("gpu-1-key.pem")).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert, key)
        .unwrap()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", h.grpc_port))
        .await
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    let a = h.agent_at("gpu-2", "gpu-2", 1, &https(&h), &tls_table(&dir, "gpu-2"));
    let log = tokio::task::spawn_blocking(move || {
        wait_for_log(&a, "certificate is not a coordinator certificate")
    })
    .await
    .unwrap();
    assert!(
        log.contains("node `gpu-1`"),
        "the refusal says what it saw: {log}"
    );
}

#[test]
fn an_agent_cannot_speak_for_another_node() {
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1,gpu-2");
    let c = h.coordinator(&tls_table(&dir, "coordinator"));
    let _good = h.agent_at("gpu-1", "gpu-1", 1, &https(&h), &tls_table(&dir, "gpu-1"));
    // Claims gpu-3 with gpu-2's certificate.
    let liar = h.agent_at("gpu-3", "gpu-3", 1, &https(&h), &tls_table(&dir, "gpu-2"));
    let why = "the client certificate is for node `gpu-2` but the Hello says `gpu-3`";
    wait_for_log(&c, why);
    let agent_log = wait_for_log(&liar, why);
    assert!(
        agent_log.contains("the agent certificate is for node `gpu-2` but this agent is `gpu-3`"),
        "the agent warns at start: {agent_log}"
    );
    let ca = dir.join("ca.pem");
    let nodes = wait_until(Duration::from_secs(20), "gpu-1 ready", || {
        let nodes = nodes_over_tls(&h, &ca)?;
        (nodes_in_state(&nodes, "ready") == ["gpu-1"]).then_some(nodes)
    });
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_open_a_session() {
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1");
    let c = h.coordinator(&tls_table(&dir, "coordinator"));
    let ca = dir.join("ca.pem");
    let h = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "the coordinator", || {
            nodes_over_tls(&h, &ca).map(|_| ())
        });
        h
    })
    .await
    .unwrap();

    let url = https(&h);
    let client_tls = tls::cli_tls(Some(&dir.join("ca.pem")), &url).unwrap();
    let endpoint = tls::endpoint(&url, client_tls.as_ref()).unwrap();
    let channel = tls::connect(endpoint, client_tls.as_ref())
        .await
        .expect("TLS without a client certificate is allowed (the CLI uses a token)");
    let mut client = pb::agent_session_client::AgentSessionClient::new(channel);
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_name: "gpu-1".into(),
            ..Default::default()
        })),
    };
    let refused = client
        .session(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("a session needs a client certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("need a client certificate"),
        "{}",
        refused.message()
    );
    assert!(c
        .log_text()
        .contains("refused an agent session without a client certificate"));

    // The coordinator's own certificate is no agent's: it has no clientAuth
    // usage, so the handshake or the session fails.
    let coordinator_as_client = tls::ClientTls::new(
        &dir.join("ca.pem"),
        Some((
            &dir.join("coordinator.pem"),
            &dir.join("coordinator-key.pem"),
        )),
    )
    .unwrap();
    let endpoint = tls::endpoint(&url, Some(&coordinator_as_client)).unwrap();
    let opened = match tls::connect(endpoint, Some(&coordinator_as_client)).await {
        Err(_) => false,
        Ok(channel) => pb::agent_session_client::AgentSessionClient::new(channel)
            .session(tokio_stream::iter(vec![pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                    node_name: "gpu-1".into(),
                    ..Default::default()
                })),
            }]))
            .await
            .is_ok(),
    };
    assert!(!opened, "a coordinator certificate must not open a session");
}

fn tokens_file(h: &Harness) -> std::path::PathBuf {
    let p = h.write(
        "tokens",
        &format!("# operators\nadmin {ADMIN}\n\nread {READ}\n"),
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn control_api_tokens_separate_readers_from_admins() {
    let h = Harness::new();
    let tokens = tokens_file(&h);
    let c = h.coordinator(&format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()));
    let with = |token: &str, args: &[&str]| h.cli_env(args, &[("GPUFLEET_TOKEN", token)]);
    wait_until(Duration::from_secs(20), "the coordinator", || {
        with(ADMIN, &["node", "ls"]).status.success().then_some(())
    });
    let spec = h.write("llama.toml", SPEC);
    let apply = ["model", "apply", "-f", spec.to_str().unwrap()];

    let none = h.cli_env(&["node", "ls"], &[]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("this coordinator requires a token: set GPUFLEET_TOKEN"),
        "{}",
        stderr(&none)
    );

    assert!(with(READ, &["node", "ls"]).status.success());
    let denied = with(READ, &apply);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("token is read-only; `apply` needs an admin token"),
        "{}",
        stderr(&denied)
    );
    let models = with(READ, &["model", "ls", "-o", "json"]);
    assert_eq!(
        stdout(&models).trim(),
        "[]",
        "a refused apply stores nothing"
    );

    let applied = with(ADMIN, &apply);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let models = with(READ, &["model", "ls", "-o", "json"]);
    assert!(
        stdout(&models).contains("llama-test"),
        "{}",
        stdout(&models)
    );

    let unknown = with("not-a-known-token-at-all", &["node", "ls"]);
    assert!(
        stderr(&unknown).contains("not known"),
        "{}",
        stderr(&unknown)
    );

    let log = c.log_text();
    assert!(
        !log.contains(ADMIN) && !log.contains(READ),
        "tokens never reach the log"
    );
}

#[test]
fn malformed_tokens_are_refused_clearly_and_harm_nothing() {
    let h = Harness::new();
    let tokens = tokens_file(&h);
    let _c = h.coordinator(&format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()));
    let admin = [("GPUFLEET_TOKEN", ADMIN)];
    wait_until(Duration::from_secs(20), "the coordinator", || {
        h.cli_env(&["node", "ls"], &admin)
            .status
            .success()
            .then_some(())
    });

    let spaced = h.cli_env(
        &["node", "ls"],
        &[("GPUFLEET_TOKEN", "admin 0123456789abcdef")],
    );
    assert!(!spaced.status.success());
    assert!(
        stderr(&spaced).contains("GPUFLEET_TOKEN contains whitespace"),
        "{}",
        stderr(&spaced)
    );

    let huge = h.write("huge-token", &"x".repeat(1 << 20));
    let out = h.cli_env(&["node", "ls", "--token-file", huge.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is 1048576 characters long; allowed: 16 to 512"),
        "{}",
        stderr(&out)
    );

    // A raw client that skips the CLI's checks: refused, and the
    // coordinator serves everyone else as before.
    let url = h.coordinator_url();
    let raw = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = pb::control_client::ControlClient::new(channel);
                let mut req = tonic::Request::new(pb::ListNodesRequest {});
                let value = format!("Bearer {}", "y".repeat(1 << 20));
                req.metadata_mut()
                    .insert("authorization", value.parse().unwrap());
                client.list_nodes(req).await.map(|_| ())
            })
    })
    .join()
    .unwrap();
    assert!(raw.is_err(), "a 1 MB token must not be accepted");
    let after = h.cli_env(&["node", "ls"], &admin);
    assert!(after.status.success(), "{}", stderr(&after));
}

#[test]
fn a_malformed_tokens_file_stops_the_coordinator_naming_the_line() {
    let h = Harness::new();
    let tokens = h.write("tokens", &format!("admin {ADMIN}\nwrite {READ}\n"));
    let mut c = h.coordinator(&format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()));
    let status = wait_until(Duration::from_secs(20), "the coordinator to exit", || {
        c.exited()
    });
    assert!(!status.success());
    let log = c.log_text();
    assert!(log.contains("line 2: unknown access `write`"), "{log}");
    assert!(!log.contains(READ), "{log}");
}

/// `/v1/endpoints` as a map model → addresses.
fn endpoints(h: &Harness) -> std::collections::BTreeMap<String, Vec<String>> {
    let (status, body) = http("GET", h.http_port, "/v1/endpoints", "");
    assert_eq!(status, 200, "{body}");
    let groups: serde_json::Value = serde_json::from_str(&body).unwrap();
    groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let targets = g["targets"].as_array().unwrap();
            (
                g["labels"]["model"].as_str().unwrap().to_string(),
                targets
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// An agent session opened with `stem`'s certificate that says `hello` and
/// then reports `replicas` every 200 ms until dropped.
async fn rogue_session(
    h: &Harness,
    dir: &Path,
    stem: &str,
    replicas: Vec<pb::ReplicaStatus>,
) -> tokio::task::JoinHandle<()> {
    let url = https(h);
    let client_tls = tls::ClientTls::new(
        &dir.join("ca.pem"),
        Some((
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}-key.pem")),
        )),
    )
    .unwrap();
    let endpoint = tls::endpoint(&url, Some(&client_tls)).unwrap();
    let channel = tls::connect(endpoint, Some(&client_tls)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let gpus = vec![pb::GpuInfo {
        index: 0,
        uuid: format!("GPU-{stem}"),
        name: "Simulated H100 80GB".into(),
        memory_total_bytes: 80 << 30,
        healthy: true,
        ..Default::default()
    }];
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_name: stem.into(),
            boot_id: "rogue".into(),
            agent_version: "rogue".into(),
            agent_instance: "rogue".into(),
            gpus: gpus.clone(),
            replicas: replicas.clone(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = pb::agent_session_client::AgentSessionClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a certified agent opens a session")
        .into_inner();
    tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            let report = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Report(pb::Report {
                    seq,
                    replicas: replicas.clone(),
                    inventory: gpus.clone(),
                    ..Default::default()
                })),
            };
            if tx.send(report).await.is_err() {
                return;
            }
            // Assignments are read (and ignored) so the stream keeps flowing.
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
        }
    })
}

/// The CLI over TLS, verifying the coordinator with `DIR/ca.pem`.
fn cli_tls(h: &Harness, dir: &Path, args: &[&str]) -> std::process::Output {
    let ca = dir.join("ca.pem");
    h.cli_env(
        args,
        &[
            ("GPUFLEET_COORDINATOR", &https(h)),
            ("GPUFLEET_CA", ca.to_str().unwrap()),
        ],
    )
}

fn replica_list(h: &Harness, dir: &Path) -> Option<Vec<serde_json::Value>> {
    let out = cli_tls(h, dir, &["replica", "ls", "-o", "json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()?
        .as_array()
        .cloned()
}

#[test]
fn a_certified_rogue_agent_cannot_hijack_or_invent_replicas() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = Harness::new();
    let dir = h.path("tls");
    tls_init(&dir, "gpu-1,gpu-3");
    let mut c = h.coordinator(&tls_table(&dir, "coordinator"));
    let _a = h.agent_at("gpu-1", "gpu-1", 1, &https(&h), &tls_table(&dir, "gpu-1"));
    let _reaper = Reaper::new(&h);
    let spec = h.model_spec("web", 1, "replicas = 1", &demo_command(&[]), "");
    let up = |h: &Harness| {
        wait_until(Duration::from_secs(30), "the coordinator", || {
            cli_tls(h, &dir, &["node", "ls"])
                .status
                .success()
                .then_some(())
        })
    };
    up(&h);
    let out = cli_tls(&h, &dir, &["model", "apply", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let real = wait_until(Duration::from_secs(60), "web ready on gpu-1", || {
        replica_list(&h, &dir)?
            .into_iter()
            .find(|r| r["state"] == "ready" && r["node"] == "gpu-1")
    });
    let before = endpoints(&h);
    assert_eq!(before["web"].len(), 1, "{before:?}");
    let real_id = real["id"].as_str().unwrap().to_string();
    let real_pid = real["pid"].as_i64().unwrap();

    // gpu-3 holds a real agent certificate and claims gpu-1's replica and an
    // invented one, both ready on ports of its choosing.
    let claim = |id: &str| pb::ReplicaStatus {
        id: id.into(),
        model: "web".into(),
        spec_hash: real["spec_hash"].as_str().unwrap().into(),
        state: pb::ReplicaState::Ready as i32,
        pid: 4242,
        port: 6666,
        gpus: vec![0],
        ready_unix_ms: 1,
        assignment_token: format!("v1.{}", "0".repeat(64)),
        ..Default::default()
    };
    let claims = vec![claim(&real_id), claim("web-rogue1")];
    let check = |h: &Harness| {
        let all = replica_list(h, &dir).unwrap();
        assert_eq!(all.len(), 1, "nothing adopted: {all:?}");
        assert_eq!(all[0]["id"], real_id.as_str());
        assert_eq!(all[0]["node"], "gpu-1");
        assert_eq!(all[0]["pid"], real_pid, "the real replica is not restarted");
        assert!(pid_alive(real_pid), "the real server keeps running");
        assert_eq!(endpoints(h), before, "no endpoint changes");
    };

    let rogue = rt.block_on(rogue_session(&h, &dir, "gpu-3", claims.clone()));
    wait_until(Duration::from_secs(20), "the claims refused", || {
        let (_, metrics) = http("GET", h.http_port, "/metrics", "");
        (metrics.contains(
            "gpufleet_replica_claims_refused_total{node=\"gpu-3\",reason=\"other_node\"} 1",
        ) && metrics.contains(
            "gpufleet_replica_claims_refused_total{node=\"gpu-3\",reason=\"bad_token\"} 1",
        ))
        .then_some(())
    });
    // Several ticks and a retirement grace later, still nothing moved.
    std::thread::sleep(Duration::from_secs(5));
    check(&h);
    let events = stdout(&cli_tls(
        &h,
        &dir,
        &["events", "--limit", "500", "-o", "json"],
    ));
    assert!(
        events.contains("it is assigned to gpu-1") && events.contains("web-rogue1"),
        "{events}"
    );
    rogue.abort();

    // After a coordinator restart the plan is rebuilt from what agents say:
    // the rogue (first to speak, as it is already dialling) adopts nothing,
    // the real replica is adopted as it runs.
    assert_eq!(c.stop(Duration::from_secs(10)), Some(0));
    let _c2 = h.coordinator(&tls_table(&dir, "coordinator"));
    up(&h);
    let rogue = rt.block_on(rogue_session(&h, &dir, "gpu-3", claims));
    wait_until(Duration::from_secs(30), "the real replica adopted", || {
        (endpoints(&h) == before).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    check(&h);
    let (_, metrics) = http("GET", h.http_port, "/metrics", "");
    assert!(
        metrics.contains("gpufleet_replica_claims_refused_total{node=\"gpu-3\""),
        "{metrics}"
    );
    rogue.abort();
}

#[test]
fn an_agent_whose_policy_is_wide_open_says_so_at_start() {
    let h = Harness::new();
    let a = h.agent(
        "gpu-1",
        1,
        "model_roots = [\"/\"]\ncheck_args = false\nallow_root_replicas = true\n",
    );
    let log = wait_for_log(&a, "check_args = false");
    for warning in [
        "model_roots includes \"/\"",
        "allow_root_replicas = true: model servers may run as root",
    ] {
        assert!(log.contains(warning), "{warning} missing from:\n{log}");
    }
}
