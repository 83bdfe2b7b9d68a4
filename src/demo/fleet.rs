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

use crate::api::{GpuView, NodeView, ReplicaView, WarmView};
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
    /// Three coordinators on one etcd (started by the demo; needs `etcd` on
    /// PATH), gRPC on --port, +2 and +4; the leader is killed (kill -9)
    /// mid-demo and the fleet carries on under a new one.
    #[arg(long)]
    pub ha: bool,
}

/// Coordinators of `demo --ha`.
const HA_COORDINATORS: u16 = 3;

/// When `demo --ha` kills the leader (or half of --duration, if shorter).
const HA_KILL_AFTER: Duration = Duration::from_secs(45);

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::units::parse_size(s)
}

const NO_LOAD_HELP: &str = "Do not send the built-in load ramp to the demo model. Without this flag the demo sends it in-process through the demo gateway, then keeps the fleet running until Ctrl-C or --duration.";

/// The demo model's name in packaging/examples/demo.toml.
const DEMO_MODEL: &str = "demo-llm";

/// Events shown at the bottom of the live view.
const VIEW_EVENTS: u32 = 20;

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
    coordinators: Vec<Daemon>,
    gateway: Option<Daemon>,
    agents: Vec<Daemon>,
    /// `demo --ha`'s etcd, stopped after everything else.
    etcd: Option<crate::etcd::server::LocalEtcd>,
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
        for d in self.coordinators.drain(..) {
            stop(d, Duration::from_secs(10));
        }
        drop(self.etcd.take());
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

/// Free space the demo's weights file must leave on its filesystem, for the
/// fleet's logs and state (and whoever else shares the disk).
const DISK_HEADROOM: u64 = 1 << 30;

fn write_weights(path: &Path, size: u64) -> anyhow::Result<()> {
    let existing = std::fs::metadata(path).map(|m| m.len()).ok();
    if existing == Some(size) {
        return Ok(());
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    // A size the disk cannot hold would fill it before the write failed.
    if let Some((free, _)) = crate::agent::host::disk_space(parent) {
        let room = (free + existing.unwrap_or(0)).saturating_sub(DISK_HEADROOM);
        if size > room {
            bail!(
                "--weights-size {} does not fit: {} has {} free; allowed: up to {} (leaving {} free)",
                crate::config::units::format_bytes(size),
                parent.display(),
                crate::config::units::format_bytes(free),
                crate::config::units::format_bytes(room),
                crate::config::units::format_bytes(DISK_HEADROOM)
            );
        }
    }
    use std::io::Write;
    let written = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        // Non-zero bytes, so no filesystem can store the file sparsely and
        // the server's read is a real read.
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.flush()
    })();
    if written.is_err() {
        // A part of the file is no use and may be most of a disk.
        let _ = std::fs::remove_file(path);
    }
    Ok(written?)
}

/// The folder of this program when it is called `gpufleet`; otherwise
/// `<dir>/bin`, with a `gpufleet` link to it there.
fn exe_dir_named_gpufleet(exe: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    if exe.file_name().is_some_and(|n| n == "gpufleet") {
        return Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let link = bin.join("gpufleet");
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
    }
    std::os::unix::fs::symlink(exe, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), exe.display()))?;
    Ok(bin)
}

pub async fn run(args: FleetArgs, log_format: crate::logging::LogFormat) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEMO_SPEC_DIR));
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    // Model specs name the server as bare `gpufleet`: put this binary first
    // on the agents' PATH (under that name, also when it was copied or
    // renamed: `gpufleet-1.2`, `target/release/deps/gpufleet-…`).
    let exe_dir = exe_dir_named_gpufleet(&exe, &dir)?;
    let path_env = format!(
        "{}:{}",
        exe_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let count = if args.ha { HA_COORDINATORS } else { 1 };
    if args.ha && !crate::etcd::server::installed() {
        bail!("gpufleet demo --ha needs etcd on PATH (Debian/Ubuntu: apt install etcd-server); without --ha the demo runs one coordinator");
    }
    // Coordinator i: gRPC on port + 2i, HTTP on the port after it.
    let mut ports = Vec::new();
    for i in 0..count {
        let grpc = args
            .port
            .checked_add(2 * i + 1)
            .context("--port must leave room for the HTTP ports after it")?
            - 1;
        check_port_free(grpc)?;
        check_port_free(grpc + 1)?;
        ports.push((grpc, grpc + 1));
    }
    let (grpc_port, http_port) = ports[0];
    let urls: Vec<String> = ports
        .iter()
        .map(|(g, _)| format!("http://127.0.0.1:{g}"))
        .collect();
    let gateway_port = args.gateway_port;
    check_port_free(gateway_port)?;

    // Fresh state each run; the weights are kept (they are just data).
    for sub in ["coordinator", "gateway", "agents", "logs", "etcd"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot clean {}", p.display()))?;
        }
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    // On a terminal the live view owns the screen: this process's own log
    // lines go to a file the view names, as the daemons' do.
    let tty = std::io::stdout().is_terminal();
    let own_log = dir.join("logs").join("demo.log");
    if tty {
        crate::logging::init_file(&own_log)
            .with_context(|| format!("cannot open {}", own_log.display()))?;
    } else {
        crate::logging::init(log_format);
    }
    let models = dir.join("models");
    let weights = models.join("demo-llm").join("weights.bin");
    write_weights(&weights, args.weights_size)
        .with_context(|| format!("cannot write {}", weights.display()))?;

    let mut fleet = Fleet {
        coordinators: Vec::new(),
        gateway: None,
        agents: Vec::new(),
        etcd: None,
    };
    let store = if args.ha {
        let etcd = crate::etcd::server::LocalEtcd::start(&dir.join("etcd"))
            .context("cannot start etcd for demo --ha")?;
        let table = format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/gpufleet-demo\"\n",
            etcd.client_url
        );
        fleet.etcd = Some(etcd);
        table
    } else {
        String::new()
    };
    let mut coordinator_cfgs = Vec::new();
    for (i, (grpc, http)) in ports.iter().enumerate() {
        let name = if args.ha {
            format!("coordinator-{}", i + 1)
        } else {
            "coordinator".into()
        };
        let cfg = dir.join("coordinator").join(format!("{name}.toml"));
        let data = dir.join("coordinator").join(format!("{name}-data"));
        let member = if args.ha {
            format!("name = \"{name}\"\n")
        } else {
            String::new()
        };
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\ndata_dir = \"{}\"\ntick = \"1s\"\nnode_suspect_after = \"5s\"\nnode_lost_after = \"15s\"\n# A fresh demo fleet has nothing to wait for.\nreconnect_grace = \"2s\"\n# No Prometheus scrapes the demo: a retiring replica only waits out the\n# balancer's 1 s refresh.\nretire_grace = \"3s\"\n{store}{member}",
                data.display()
            ),
        )?;
        fleet
            .coordinators
            .push(spawn_coordinator(&exe, &name, &cfg, &dir, &path_env)?);
        coordinator_cfgs.push((name, cfg));
    }
    let agent_coordinators = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let gateway_cfg = dir.join("gateway").join("gateway.toml");
    std::fs::write(
        &gateway_cfg,
        format!(
            "listen = \"127.0.0.1:{gateway_port}\"\ncoordinator = [{agent_coordinators}]\nname = \"demo-gateway\"\n"
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
                "node_name = \"{name}\"\ncoordinator = [{agent_coordinators}]\nstate_dir = \"{}\"\nhttp_listen = \"{http}\"\nmodel_roots = [\"{}\"]\nport_range = \"{}-{}\"\nallow_root_replicas = true\n[gpu]\nbackend = \"simulated\"\nsimulated_count = {}\n",
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
    }

    let client = ClientArgs::plain(urls.join(","));
    let mut control = wait_for_fleet(&client, args.agents, &mut fleet).await?;

    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    // What the live view keeps at its top: where everything is, where the
    // logs go, and what to try.
    let coordinators = if args.ha {
        format!("{HA_COORDINATORS} coordinators on etcd, gRPC 127.0.0.1:{grpc_port},+2,+4")
    } else {
        format!("coordinator 127.0.0.1:{grpc_port} (HTTP :{http_port})")
    };
    let mut banner = vec![
        format!(
            "{coordinators} · gateway {gateway_url} · {} agents × {} GPUs",
            args.agents, args.gpus_per_agent
        ),
        format!("logs  {}/", dir.join("logs").display()),
        format!("try   gpufleet replica ls · gpufleet events -f · gpufleet explain {DEMO_MODEL}"),
    ];
    if !tty {
        println!("gpufleet demo: a local fleet on simulated GPUs\n");
        for line in &banner {
            println!("  {line}");
        }
        println!();
    }

    if !args.no_model {
        let spec = DEMO_SPEC.replace(DEMO_SPEC_DIR, &dir.display().to_string());
        control
            .apply_model(pb::ApplyModelRequest { spec_toml: spec })
            .await
            .map_err(|s| anyhow::anyhow!("cannot apply the demo model: {}", s.message()))?;
        tracing::info!(
            model = DEMO_MODEL,
            "applied the demo model (packaging/examples/demo.toml)"
        );
    }
    let ramp = (!args.no_model && !args.no_load).then(|| {
        if !tty {
            println!("  sending load to {DEMO_MODEL} through the gateway: {RAMP_SUMMARY}\n");
        }
        Ramp::start(&gateway_url, DEMO_MODEL, &RAMP)
    });
    if !tty {
        println!("Ctrl-C stops the fleet.\n");
    }

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from(d));
    let kill_at = args.ha.then(|| {
        started
            + args
                .duration
                .map_or(HA_KILL_AFTER, |d| HA_KILL_AFTER.min(Duration::from(d) / 2))
    });
    // The leader killed, when, and the replicas running just before.
    let mut killed: Option<(String, Instant, Vec<String>)> = None;
    let mut shutdown = std::pin::pin!(crate::cli::shutdown_signal());
    loop {
        if let Some(dead) = exited(&mut fleet) {
            bail!("{dead}");
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) && killed.is_none() {
            let before = replica_ids(&mut control).await;
            match kill_leader(
                &mut control,
                &mut fleet,
                &coordinator_cfgs,
                &exe,
                &dir,
                &path_env,
            )
            .await
            {
                Ok(name) => {
                    let line = format!("HA    killed the leader {name} (kill -9) and started it again; waiting for a new leader…");
                    if !tty {
                        println!("  {line}");
                    }
                    banner.push(line);
                    killed = Some((name, Instant::now(), before));
                }
                Err(e) => tracing::warn!(error = %e, "demo --ha: could not kill the leader"),
            }
        }
        if let Some((old, at, before)) = &killed {
            if banner.last().is_some_and(|l| l.ends_with('…')) {
                if let Ok(Ok(s)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    control.get_coordinator_status(pb::GetCoordinatorStatusRequest {}),
                )
                .await
                {
                    let s = s.into_inner();
                    // Told once the new leader has every agent back.
                    let attached = control
                        .list_nodes(pb::ListNodesRequest {})
                        .await
                        .map(|r| {
                            r.into_inner()
                                .nodes
                                .iter()
                                .filter(|n| n.connected_unix_ms != 0)
                                .count()
                        })
                        .unwrap_or(0);
                    if !s.leader.is_empty() && s.leader != *old && attached == args.agents as usize
                    {
                        let now = replica_ids(&mut control).await;
                        let gone = before.iter().filter(|id| !now.contains(id)).count();
                        let kept = if gone == 0 {
                            format!("all {} replicas from before still run", before.len())
                        } else {
                            format!("{gone} of {} replicas from before are gone", before.len())
                        };
                        let line = format!(
                            "HA    killed the leader {old}; {} leads (epoch {}), agents back {:.1} s after the kill; {kept}",
                            s.leader,
                            s.epoch,
                            at.elapsed().as_secs_f64()
                        );
                        if !tty {
                            println!("  {line}");
                        }
                        banner.pop();
                        banner.push(line);
                    }
                }
            }
        }
        if let Err(e) = print_view(&mut control, &banner, ramp.as_ref(), tty).await {
            tracing::warn!(error = %e, "live view");
            // The coordinator it asked may be gone (demo --ha): ask the list again.
            if let Ok(c) = connect(&client).await {
                control = c;
            }
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

fn spawn_coordinator(
    exe: &Path,
    name: &str,
    cfg: &Path,
    dir: &Path,
    path_env: &str,
) -> anyhow::Result<Daemon> {
    let log = dir.join("logs").join(format!("{name}.log"));
    // A restarted coordinator appends to its log.
    let keep = std::fs::read(&log).unwrap_or_default();
    let d = spawn(
        exe,
        name,
        &[
            "coordinator".into(),
            "--config".into(),
            cfg.display().to_string(),
        ],
        log.clone(),
        path_env,
    )?;
    if !keep.is_empty() {
        let _ = std::fs::write(
            dir.join("logs").join(format!("{name}.before-kill.log")),
            keep,
        );
    }
    Ok(d)
}

/// The ids of the fleet's replicas (empty when the coordinator does not answer).
async fn replica_ids(control: &mut Control) -> Vec<String> {
    control
        .list_replicas(pb::ListReplicasRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .replicas
                .into_iter()
                .filter_map(|r| r.status.map(|s| s.id))
                .collect()
        })
        .unwrap_or_default()
}

/// `demo --ha`: kills the leader with SIGKILL and starts it again (it joins
/// as a follower); the leader's name.
async fn kill_leader(
    control: &mut Control,
    fleet: &mut Fleet,
    cfgs: &[(String, PathBuf)],
    exe: &Path,
    dir: &Path,
    path_env: &str,
) -> anyhow::Result<String> {
    let s = control
        .get_coordinator_status(pb::GetCoordinatorStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let at = cfgs
        .iter()
        .position(|(name, _)| *name == s.leader)
        .with_context(|| format!("no leader to kill (leader: {:?})", s.leader))?;
    let d = &mut fleet.coordinators[at];
    d.child.kill()?;
    d.child.wait()?;
    let (name, cfg) = &cfgs[at];
    fleet.coordinators[at] = spawn_coordinator(exe, name, cfg, dir, path_env)?;
    tracing::info!(leader = %name, "demo --ha: killed the leader and started it again");
    Ok(name.clone())
}

/// A daemon that exited on its own, described with the end of its log.
fn exited(fleet: &mut Fleet) -> Option<String> {
    let daemons = fleet
        .coordinators
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

async fn print_view(
    c: &mut Control,
    banner: &[String],
    ramp: Option<&Ramp>,
    tty: bool,
) -> anyhow::Result<()> {
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
    let warm: Vec<WarmView> = c
        .list_warm(pb::ListWarmRequest {
            node: String::new(),
        })
        .await?
        .into_inner()
        .entries
        .into_iter()
        .map(Into::into)
        .collect();
    let events = c
        .list_events(pb::ListEventsRequest {
            model: String::new(),
            node: String::new(),
            limit: VIEW_EVENTS,
        })
        .await?
        .into_inner()
        .events;
    let view = View {
        banner,
        ramp: ramp.map(|r| ramp::render_status(&r.status(tokio::time::Instant::now()))),
        nodes: &nodes,
        gpus: &gpus,
        replicas: &replicas,
        warm: &warm,
        events: &events,
    };
    let (rows, cols) = if tty {
        terminal_size()
    } else {
        (usize::MAX, usize::MAX)
    };
    let mut out = String::new();
    if tty {
        // Clear the screen and home the cursor: a live view, not a scroll.
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&view.render(rows, cols));
    print!("{out}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The terminal's rows and columns (30 × 100 when it does not say).
fn terminal_size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills a winsize for the descriptor; stdout is a
    // terminal here, and a failure leaves the zeroed struct untouched.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (usize::from(ws.ws_row), usize::from(ws.ws_col))
    } else {
        (30, 100)
    }
}

/// What one frame of the live view shows.
struct View<'a> {
    banner: &'a [String],
    ramp: Option<String>,
    nodes: &'a [NodeView],
    gpus: &'a [GpuView],
    replicas: &'a [ReplicaView],
    warm: &'a [WarmView],
    events: &'a [pb::Event],
}

impl View<'_> {
    /// The frame in at most `rows` lines of at most `cols` characters: the
    /// banner stays on top, GPUs, replicas and warm weights follow, and the
    /// newest events fill what is left.
    fn render(&self, rows: usize, cols: usize) -> String {
        let mut lines: Vec<String> = vec![format!(
            "gpufleet demo — {} — Ctrl-C stops",
            crate::api::rfc3339(crate::domain::unix_ms_now())
        )];
        lines.extend(self.banner.iter().cloned());
        if let Some(r) = &self.ramp {
            lines.push(String::new());
            lines.extend(r.lines().map(str::to_string));
        }
        lines.push(String::new());
        let mut t = crate::cli::output::Table::new(&[
            "NODE", "STATE", "GPU", "MEM USED", "UTIL", "HEALTH", "REPLICA",
        ]);
        for n in self.nodes {
            for g in self.gpus.iter().filter(|g| g.node == n.name) {
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
        lines.extend(t.render().lines().map(str::to_string));
        if !self.replicas.is_empty() {
            lines.push(String::new());
            let mut t = crate::cli::output::Table::new(&[
                "REPLICA", "NODE", "STATE", "PORT", "ONGOING", "RESTARTS",
            ]);
            for r in self.replicas {
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
            lines.extend(t.render().lines().map(str::to_string));
        }
        if !self.warm.is_empty() {
            lines.push(String::new());
            lines.extend(self.warm.iter().map(warm_line));
        }
        // The newest events that still fit, oldest first.
        let room = rows.saturating_sub(lines.len() + 2);
        if room > 0 && !self.events.is_empty() {
            lines.push(String::new());
            let skip = self.events.len().saturating_sub(room);
            lines.extend(self.events[skip..].iter().map(event_line));
        }
        lines.truncate(rows.saturating_sub(1).max(1));
        let mut out = String::new();
        for line in lines {
            out.extend(line.chars().take(cols));
            out.push('\n');
        }
        out
    }
}

/// One warm cache entry with a progress bar: node, model, how much of it
/// is in the page cache, and how fast it is filling.
fn warm_line(w: &WarmView) -> String {
    let frac = if w.total_bytes > 0 {
        (w.resident_bytes as f64 / w.total_bytes as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (frac * 20.0).round() as usize;
    let rate = if w.rate_bytes_per_s > 0.0 {
        format!(
            "  {}/s",
            crate::cli::output::bytes(w.rate_bytes_per_s as u64)
        )
    } else {
        String::new()
    };
    format!(
        "warm  {:<10} {:<10} [{}{}] {:>3.0}%  {} / {}  {}{rate}",
        w.node,
        w.model,
        "#".repeat(filled),
        "-".repeat(20 - filled),
        frac * 100.0,
        crate::cli::output::bytes(w.resident_bytes),
        crate::cli::output::bytes(w.total_bytes),
        w.state
    )
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
    fn weights_larger_than_the_disk_are_refused_before_a_byte_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models").join("weights.bin");
        let err = write_weights(&path, 1 << 60).unwrap_err().to_string();
        assert!(
            err.starts_with("--weights-size 1.0 EiB does not fit:"),
            "{err}"
        );
        assert!(err.contains("allowed: up to"), "{err}");
        assert!(!path.exists());
        write_weights(&path, 3 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
    }

    #[test]
    fn the_view_keeps_its_banner_and_fits_the_screen() {
        let banner = vec![
            format!("coordinator {}", "x".repeat(150)),
            "logs  /tmp/demo/logs/".into(),
        ];
        let warm = WarmView::new(
            "agent-1",
            &crate::domain::WarmStatus {
                model: "demo-llm".into(),
                path: "/m".into(),
                resident_bytes: 3 << 28,
                total_bytes: 1 << 30,
                state: "warming".into(),
                rate_bytes_per_s: (1u64 << 30) as f64,
                ..Default::default()
            },
            "standby",
        );
        let events: Vec<pb::Event> = (0..40)
            .map(|i| pb::Event {
                seq: i,
                kind: "scale".into(),
                message: format!("event {i}"),
                ..Default::default()
            })
            .collect();
        let view = View {
            banner: &banner,
            ramp: Some("ramp: spike 20 req/s\nsent 10  ok 10".into()),
            nodes: &[],
            gpus: &[],
            replicas: &[],
            warm: std::slice::from_ref(&warm),
            events: &events,
        };
        let frame = view.render(30, 100);
        let lines: Vec<&str> = frame.lines().collect();
        assert!(lines.len() <= 29, "{frame}");
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{frame}");
        assert!(lines[0].starts_with("gpufleet demo — "), "{frame}");
        assert!(
            lines[1].starts_with("coordinator xxx"),
            "the banner stays: {frame}"
        );
        assert_eq!(lines[2], "logs  /tmp/demo/logs/");
        assert!(
            frame.contains("[###############-----]  75%"),
            "warming shows its progress: {frame}"
        );
        // The newest events, as many as fit.
        assert!(frame.contains("event 39"), "{frame}");
        assert!(!frame.contains("event 0\n"), "{frame}");
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
            detail_json: String::new(),
        };
        let line = event_line(&e);
        assert!(line.starts_with("22:13:20  scale_up "), "{line}");
        assert!(line.ends_with("1 -> 3 replicas"), "{line}");
    }
}
