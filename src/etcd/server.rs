//! A throwaway etcd on loopback: one member, free ports, its data in a
//! temporary directory (on /dev/shm where there is one). For `gpufleet demo
//! --ha`, the HA tests and the failover benchmark; not for a real fleet.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Etcd, EtcdSettings};

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Whether an `etcd` binary is on PATH.
pub fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct LocalEtcd {
    child: Option<Child>,
    pub client_url: String,
    peer_port: u16,
    dir: PathBuf,
    /// Its member name, and the `--initial-cluster` it was made with.
    name: String,
    cluster: String,
    _tmp: Option<tempfile::TempDir>,
}

/// The scratch directory tests use: on /dev/shm where there is one.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("gpufleet-etcd-")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory for etcd")
}

impl LocalEtcd {
    /// Starts etcd, or prints why the calling test is skipped.
    pub fn start_or_skip() -> Option<LocalEtcd> {
        LocalEtcd::start_or_skip_on("127.0.0.1")
    }

    /// Like `start_or_skip`, serving clients on `host` (an address of this
    /// network namespace) instead of 127.0.0.1.
    pub fn start_or_skip_on(host: &str) -> Option<LocalEtcd> {
        if !installed() {
            println!("SKIPPED: etcd not installed (Debian package etcd-server)");
            return None;
        }
        let tmp = scratch();
        let mut etcd = LocalEtcd::start_on(tmp.path(), host).expect("etcd starts");
        etcd._tmp = Some(tmp);
        Some(etcd)
    }

    /// Starts etcd with its data and log in `dir`, and waits until it serves.
    pub fn start(dir: &Path) -> anyhow::Result<LocalEtcd> {
        LocalEtcd::start_on(dir, "127.0.0.1")
    }

    fn start_on(dir: &Path, host: &str) -> anyhow::Result<LocalEtcd> {
        let peer_port = free_port();
        let mut etcd = LocalEtcd::member(dir, "gpufleet", peer_port);
        etcd.client_url = format!("http://{host}:{}", free_port());
        etcd.cluster = format!("gpufleet=http://127.0.0.1:{peer_port}");
        etcd.launch()?;
        etcd.wait_ready()?;
        Ok(etcd)
    }

    fn member(dir: &Path, name: &str, peer_port: u16) -> LocalEtcd {
        LocalEtcd {
            child: None,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_port,
            dir: dir.to_path_buf(),
            name: name.into(),
            cluster: String::new(),
            _tmp: None,
        }
    }

    /// A cluster of `n` members (each in its own directory under one
    /// scratch dir), or None with a SKIPPED line when etcd is missing.
    pub fn cluster_or_skip(n: usize) -> Option<Vec<LocalEtcd>> {
        if !installed() {
            println!("SKIPPED: etcd not installed (Debian package etcd-server)");
            return None;
        }
        let tmp = scratch();
        let mut members: Vec<LocalEtcd> = (0..n)
            .map(|i| {
                LocalEtcd::member(
                    &tmp.path().join(format!("m{i}")),
                    &format!("m{i}"),
                    free_port(),
                )
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        // All start before any is waited for: none serves without a quorum.
        for m in &mut members {
            m.cluster = cluster.clone();
            m.launch().expect("etcd starts");
        }
        for m in &mut members {
            m.wait_ready().expect("etcd member serves");
        }
        members[0]._tmp = Some(tmp);
        Some(members)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start etcd: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until this member answers.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.block_on(|etcd| async move { etcd.get(b"/").await.is_ok() }) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                anyhow::bail!(
                    "etcd exited ({status}) at start; see {}",
                    self.dir.join("etcd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "etcd did not answer within 60 s; see {}",
            self.dir.join("etcd.log").display()
        )
    }

    pub fn settings(&self) -> EtcdSettings {
        EtcdSettings {
            endpoints: vec![self.client_url.clone()],
            ..Default::default()
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops etcd (its data is kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()?;
        self.wait_ready()
    }

    /// Starts a stopped member again without waiting (a cluster member
    /// serves only once a quorum is back).
    pub fn relaunch(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// Runs `f` with a client on a throwaway runtime, on a thread of its
    /// own (so async tests can call it too).
    fn block_on<T: Send, F>(&self, f: impl FnOnce(Etcd) -> F + Send) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let settings = self.settings();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    rt.block_on(async move {
                        let etcd = Etcd::new(&settings).expect("a loopback endpoint is valid");
                        f(etcd).await
                    })
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Creates `key` (no lease) if absent; its create revision.
    pub fn claim(&self, key: &str) -> i64 {
        let key = key.as_bytes().to_vec();
        self.block_on(|etcd| async move {
            let resp = etcd
                .txn(super::TxnRequest {
                    compare: vec![super::absent(&key)],
                    success: vec![super::put_op(key.clone(), b"test".to_vec(), 0)],
                    failure: vec![],
                })
                .await
                .expect("etcd answers");
            assert!(resp.succeeded, "the key was free");
            super::revision(&resp)
        })
    }

    pub fn delete(&self, key: &str) {
        let key = key.as_bytes().to_vec();
        self.block_on(|etcd| async move {
            etcd.txn(super::TxnRequest {
                success: vec![super::delete_op(key, vec![])],
                ..Default::default()
            })
            .await
            .expect("etcd answers");
        })
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.as_bytes().to_vec();
        self.block_on(|etcd| async move {
            etcd.range_prefix(&prefix)
                .await
                .expect("etcd answers")
                .into_iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect()
        })
    }

    /// The value of `key`, if any.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.as_bytes().to_vec();
        self.block_on(|etcd| async move { etcd.get(&key).await.expect("etcd answers") })
            .map(|kv| kv.value)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
