//! `gpufleet demo`: a real local fleet — one coordinator and N agents, each a
//! separate process of this binary on loopback, with simulated GPUs — plus a
//! demo model whose replicas are real demo model servers, driven through a
//! load ramp so the fleet is seen scaling up and back down.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::{GpuView, NodeView, ReplicaView};
use crate::cli::client::{connect, ClientArgs, Control};
use crate::demo::ramp::{self, Ramp, RAMP, RAMP_SUMMARY};
use crate::wire::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Agents (simulated GPU hosts) to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub agents: u32,
    /// Simulated GPUs per agent.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub gpus_per_agent: u32,
    /// Stop by itself after this long [default: run until Ctrl-C].
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Coordinator gRPC port; its HTTP port is the next one.
    #[arg(long, default_value_t = 7460)]
    pub port: u16,
    /// The demo gateway's port (OpenAI-compatible, every model).
    #[arg(long, default_value_t = 7470)]
    pub gateway_port: u16,
    /// Working directory (configs, state, logs, demo weights).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Start the fleet without applying the demo model (and so without load).
    #[arg(long)]
    pub no_model: bool,
    /// Do not send the built-in load ramp to the demo model (--help: the ramp).
    #[arg(long, long_help = format!("{}\n\nThe ramp: {RAMP_SUMMARY}.", NO_LOAD_HELP))]
    pub no_load: bool,
    /// Size of the demo model's weights file.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub weights_size: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::units::parse_size(s)
}

const NO_LOAD_HELP: &str = "Do not send the built-in load ramp to the demo model. Without this flag the demo sends it in-process through the demo gateway, then keeps the fleet running until Ctrl-C or --duration.";

/// The demo model's name in packaging/examples/demo.toml.
const DEMO_MODEL: &str = "demo-llm";

/// Events shown at the bottom of the live view.
const VIEW_EVENTS: u32 = 8;

/// The demo model's spec; `{dir}` is replaced by the demo directory.
const DEMO_SPEC: &str = include_str!("../../packaging/examples/demo.toml");

/// Where the demo spec in packaging/examples expects the weights.
const DEMO_SPEC_DIR: &str = "/tmp/gpufleet-demo";

struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The demo's child processes; stopped (agents first) when dropped, so no
/// process outlives the demo, even on an error path.
struct Fleet {
    coordinator: Option<Daemon>,
    gateway: Option<Daemon>,
    agents: Vec<Daemon>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(d) = self.gateway.take() {
            stop(d, Duration::from_secs(15));
        }
        // Agents first: they stop their replicas on the way out.
        for d in self.agents.drain(..) {
            stop(d, Duration::from_secs(20));
        }
        if let Some(d) = self.coordinator.take() {
            stop(d, Duration::from_secs(10));
        }
    }
}

fn stop(mut d: Daemon, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = d.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{} did not stop within {grace:?}; killing it", d.name);
    let _ = d.child.kill();
    let _ = d.child.wait();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check_port_free(port: u16) -> anyhow::Result<()> {
    TcpListener::bind(("127.0.0.1", port)).map(drop).with_context(|| {
        format!("port {port} on 127.0.0.1 is in use (another coordinator or demo?); pick others with --port")
    })
}

fn spawn(
    exe: &Path,
    name: &str,
    args: &[String],
    log: PathBuf,
    path_env: &str,
) -> anyhow::Result<Daemon> {
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .env("PATH", path_env)
        .env_remove("GPUFLEET_COORDINATOR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: Ctrl-C reaches the demo alone, which then
        // stops everything in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the {name}"))?;
    Ok(Daemon {
        name: name.to_string(),
        child,
        log,
    })
}

fn write_weights(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path)
        .map(|m| m.len() == size)
        .unwrap_or(false)
    {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Non-zero bytes, so no filesystem can store the file sparsely and the
    // server's read is a real read.
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEMO_SPEC_DIR));
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let exe_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Model specs name the server as bare `gpufleet`: put this binary first
    // on the agents' PATH.
    let path_env = format!(
        "{}:{}",
        exe_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let grpc_port = args.port;
    let http_port = args
        .port
        .checked_add(1)
        .context("--port must leave room for the HTTP port after it")?;
    check_port_free(grpc_port)?;
    check_port_free(http_port)?;
    let gateway_port = args.gateway_port;
    check_port_free(gateway_port)?;

    // Fresh state each run; the weights are kept (they are just data).
    for sub in ["coordinator", "gateway", "agents", "logs"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot clean {}", p.display()))?;
        }
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let models = dir.join("models");
    let weights = models.join("demo-llm").join("weights.bin");
    write_weights(&weights, args.weights_size)
        .with_context(|| format!("cannot write {}", weights.display()))?;

    let coordinator_cfg = dir.join("coordinator").join("coordinator.toml");
    std::fs::write(
        &coordinator_cfg,
        format!(
            "listen = \"127.0.0.1:{grpc_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\ndata_dir = \"{}\"\ntick = \"1s\"\nnode_suspect_after = \"5s\"\nnode_lost_after = \"15s\"\n# A fresh demo fleet has nothing to wait for.\nreconnect_grace = \"2s\"\n# No Prometheus scrapes the demo: a retiring replica only waits out the\n# balancer's 1 s refresh.\nretire_grace = \"3s\"\n",
            dir.join("coordinator").display()
        ),
    )?;
    let mut fleet = Fleet {
        coordinator: Some(spawn(
            &exe,
            "coordinator",
            &[
                "coordinator".into(),
                "--config".into(),
                coordinator_cfg.display().to_string(),
            ],
            dir.join("logs").join("coordinator.log"),
            &path_env,
        )?),
        gateway: None,
        agents: Vec::new(),
    };
    let gateway_cfg = dir.join("gateway").join("gateway.toml");
    std::fs::write(
        &gateway_cfg,
        format!(
            "listen = \"127.0.0.1:{gateway_port}\"\ncoordinator = \"http://127.0.0.1:{grpc_port}\"\nname = \"demo-gateway\"\n"
        ),
    )?;
    fleet.gateway = Some(spawn(
        &exe,
        "gateway",
        &[
            "gateway".into(),
            "--config".into(),
            gateway_cfg.display().to_string(),
        ],
        dir.join("logs").join("gateway.log"),
        &path_env,
    )?);
    let mut agent_http = Vec::new();
    for i in 1..=args.agents {
        let name = format!("demo-node-{i}");
        let state = dir.join("agents").join(&name);
        std::fs::create_dir_all(&state)?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let cfg = state.join("agent.toml");
        // The demo's servers run as whoever started the demo, on their own
        // machine, root included.
        std::fs::write(
            &cfg,
            format!(
                "node_name = \"{name}\"\ncoordinator = \"http://127.0.0.1:{grpc_port}\"\nstate_dir = \"{}\"\nhttp_listen = \"{http}\"\nmodel_roots = [\"{}\"]\nport_range = \"{}-{}\"\nallow_root_replicas = true\n[gpu]\nbackend = \"simulated\"\nsimulated_count = {}\n",
                state.display(),
                models.display(),
                21000 + (i - 1) * 100,
                21000 + (i - 1) * 100 + 99,
                args.gpus_per_agent
            ),
        )?;
        fleet.agents.push(spawn(
            &exe,
            &name,
            &[
                "agent".into(),
                "--config".into(),
                cfg.display().to_string(),
                "--stop-replicas-on-exit".into(),
            ],
            dir.join("logs").join(format!("{name}.log")),
            &path_env,
        )?);
        agent_http.push((name, http));
    }

    let client = ClientArgs::plain(format!("http://127.0.0.1:{grpc_port}"));
    let mut control = wait_for_fleet(&client, args.agents, &mut fleet).await?;

    println!("gpufleet demo: a local fleet on simulated GPUs\n");
    println!("  coordinator  gRPC 127.0.0.1:{grpc_port}   HTTP http://127.0.0.1:{http_port} (/metrics, /healthz, /v1/endpoints)");
    println!("  gateway      http://127.0.0.1:{gateway_port} (/v1/completions, /v1/chat/completions, /v1/models, /metrics, /status)");
    for (name, http) in &agent_http {
        println!(
            "  {name:<12} {} simulated GPUs, HTTP http://{http}/metrics",
            args.gpus_per_agent
        );
    }
    println!("  working dir  {} (logs in logs/)\n", dir.display());

    if !args.no_model {
        let spec = DEMO_SPEC.replace(DEMO_SPEC_DIR, &dir.display().to_string());
        control
            .apply_model(pb::ApplyModelRequest { spec_toml: spec })
            .await
            .map_err(|s| anyhow::anyhow!("cannot apply the demo model: {}", s.message()))?;
        println!("  applied model {DEMO_MODEL} (packaging/examples/demo.toml)\n");
    }
    let ramp = (!args.no_model && !args.no_load).then(|| {
        println!("  sending load to {DEMO_MODEL} through the gateway: {RAMP_SUMMARY}\n");
        Ramp::start(
            &format!("http://127.0.0.1:{gateway_port}"),
            DEMO_MODEL,
            &RAMP,
        )
    });
    println!("Try, in another terminal:");
    println!("  gpufleet node ls        gpufleet gpu ls        gpufleet model ls        gpufleet replica ls");
    println!("  gpufleet events --follow");
    println!("  gpufleet gateway status --gateway http://127.0.0.1:{gateway_port}");
    println!("  gpufleet demo load --gateway http://127.0.0.1:{gateway_port} --model demo-llm --rps 20 --duration 60s");
    println!("  curl -s http://127.0.0.1:{gateway_port}/v1/completions -d '{{\"model\": \"demo-llm\", \"prompt\": \"hi\", \"stream\": true}}'\n");
    println!("Ctrl-C stops the fleet.\n");

    let deadline = args.duration.map(|d| Instant::now() + Duration::from(d));
    let tty = std::io::stdout().is_terminal();
    let mut shutdown = std::pin::pin!(crate::cli::shutdown_signal());
    loop {
        if let Some(dead) = exited(&mut fleet) {
            bail!("{dead}");
        }
        if let Err(e) = print_view(&mut control, ramp.as_ref(), tty).await {
            eprintln!("live view: {e}");
        }
        let wait = Duration::from_secs(2);
        if let Some(d) = deadline {
            if Instant::now() >= d {
                break;
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    drop(ramp);
    println!("\nstopping the demo fleet…");
    tokio::task::spawn_blocking(move || drop(fleet)).await?;
    println!("stopped; logs are in {}", dir.join("logs").display());
    Ok(())
}

/// A daemon that exited on its own, described with the end of its log.
fn exited(fleet: &mut Fleet) -> Option<String> {
    let daemons = fleet
        .coordinator
        .iter_mut()
        .chain(fleet.gateway.iter_mut())
        .chain(fleet.agents.iter_mut());
    for d in daemons {
        if let Ok(Some(status)) = d.child.try_wait() {
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Some(format!(
                "the {} exited ({status}); last lines of {}:\n{}",
                d.name,
                d.log.display(),
                tail.join("\n")
            ));
        }
    }
    None
}

async fn wait_for_fleet(
    client: &ClientArgs,
    agents: u32,
    fleet: &mut Fleet,
) -> anyhow::Result<Control> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dead) = exited(fleet) {
            bail!("{dead}");
        }
        if let Ok(mut c) = connect(client).await {
            if let Ok(r) = c.list_nodes(pb::ListNodesRequest {}).await {
                if r.into_inner().nodes.len() as u32 >= agents {
                    return Ok(c);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the fleet did not come up within 30s; see the logs in the demo directory");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn print_view(c: &mut Control, ramp: Option<&Ramp>, tty: bool) -> anyhow::Result<()> {
    let nodes: Vec<NodeView> = c
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes
        .into_iter()
        .map(Into::into)
        .collect();
    let gpus: Vec<GpuView> = c
        .list_gpus(pb::ListGpusRequest {
            node: String::new(),
        })
        .await?
        .into_inner()
        .gpus
        .into_iter()
        .map(Into::into)
        .collect();
    let replicas: Vec<ReplicaView> = c
        .list_replicas(pb::ListReplicasRequest::default())
        .await?
        .into_inner()
        .replicas
        .into_iter()
        .map(Into::into)
        .collect();
    let mut out = String::new();
    if tty {
        // Clear the screen and home the cursor: a live view, not a scroll.
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!(
        "gpufleet demo — {} (Ctrl-C to stop)\n\n",
        crate::api::rfc3339(crate::domain::unix_ms_now())
    ));
    if let Some(r) = ramp {
        out.push_str(&ramp::render_status(&r.status(tokio::time::Instant::now())));
        out.push_str("\n\n");
    }
    let mut t = crate::cli::output::Table::new(&[
        "NODE", "STATE", "GPU", "MEM USED", "UTIL", "HEALTH", "REPLICA",
    ]);
    for n in &nodes {
        for g in gpus.iter().filter(|g| g.node == n.name) {
            t.row(vec![
                n.name.clone(),
                n.state.as_str().into(),
                g.index.to_string(),
                format!(
                    "{} / {}",
                    crate::cli::output::bytes(g.memory_used_bytes),
                    crate::cli::output::bytes(g.memory_total_bytes)
                ),
                format!("{:.0}%", g.utilization_pct),
                if g.healthy {
                    "ok".into()
                } else {
                    g.health_reason.clone()
                },
                if g.replica.is_empty() {
                    "-".into()
                } else {
                    g.replica.clone()
                },
            ]);
        }
    }
    out.push_str(&t.render());
    if !replicas.is_empty() {
        out.push('\n');
        let mut t = crate::cli::output::Table::new(&[
            "REPLICA", "NODE", "STATE", "PORT", "ONGOING", "RESTARTS",
        ]);
        for r in &replicas {
            t.row(vec![
                r.status.id.clone(),
                r.node.clone(),
                r.status.state.as_str().into(),
                if r.status.port == 0 {
                    "-".into()
                } else {
                    r.status.port.to_string()
                },
                format!("{:.0}", r.status.signals.ongoing()),
                r.status.restarts.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    let events = c
        .list_events(pb::ListEventsRequest {
            model: String::new(),
            node: String::new(),
            limit: VIEW_EVENTS,
        })
        .await?
        .into_inner()
        .events;
    if !events.is_empty() {
        out.push('\n');
        for e in &events {
            out.push_str(&event_line(e));
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

/// One event as the live view shows it: UTC time of day, kind, message.
fn event_line(e: &pb::Event) -> String {
    let stamp = crate::api::rfc3339(e.time_unix_ms);
    // rfc3339 is "YYYY-MM-DDTHH:MM:SSZ"; the view wants the time of day.
    let time = stamp.get(11..19).unwrap_or(&stamp);
    format!("{time}  {:<22} {}", e.kind, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fleet: FleetArgs,
    }

    #[test]
    fn the_help_tells_the_ramp_and_no_load_turns_it_off() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(RAMP_SUMMARY), "{help}");
        let on = Cli::try_parse_from(["demo", "--duration", "150s", "--port", "7760"]).unwrap();
        assert!(!on.fleet.no_load);
        let off = Cli::try_parse_from(["demo", "--no-load"]).unwrap();
        assert!(off.fleet.no_load);
    }

    #[test]
    fn an_event_line_has_time_kind_and_message() {
        let e = pb::Event {
            seq: 3,
            time_unix_ms: 1_700_000_000_000,
            kind: "scale_up".into(),
            model: "demo-llm".into(),
            node: String::new(),
            replica: String::new(),
            message: "1 -> 3 replicas".into(),
        };
        let line = event_line(&e);
        assert!(line.starts_with("22:13:20  scale_up "), "{line}");
        assert!(line.ends_with("1 -> 3 replicas"), "{line}");
    }
}
