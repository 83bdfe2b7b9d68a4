//! The store on etcd, for several coordinators with one leader. Every write
//! is one txn that holds only while this coordinator's epoch (the create
//! revision of the leader key) is still the leader key's: a deposed leader
//! that wakes up changes nothing, and learns it here.
//!
//! Key layout under the prefix (docs/ha.md):
//! `leader`, `members/<name>`, `models/<name>`, `nodes/<node>`,
//! `events/<seq, 20 digits>`, `demand/<model>/fine/<hour>`,
//! `demand/<model>/coarse/<day>`, `secrets/assignment-hmac-sha256`.
//! Values are the same checksummed records as in redb.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::api::Event;
use crate::coordinator::predict::DemandHistory;
use crate::etcd::{self, Etcd, EtcdError, EtcdSettings, RequestOp, TxnRequest};

use super::{demand, record, DamagedRecord, ModelRecord, NodeFlags, Store, StoreError};

/// Each value stays well under etcd's request limit; a bigger one is
/// refused before anything is sent.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The leadership a store writes under: the epoch it holds (0: none), until
/// when its lease is surely still live, and a signal raised when a write
/// finds the epoch gone.
#[derive(Debug, Default)]
pub struct Fence {
    epoch: AtomicI64,
    until: std::sync::Mutex<Option<std::time::Instant>>,
    lost: tokio::sync::Notify,
}

impl Fence {
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }
    pub fn hold(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }
    /// The lease was renewed: the term holds until `until` (the step-down
    /// deadline) unless renewed again.
    pub fn renewed(&self, until: std::time::Instant) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }
    /// Whether an epoch is held and its deadline has not passed: false at
    /// once for a process that wakes from a pause past its deadline, before
    /// the election gets to step it down.
    pub fn in_term(&self) -> bool {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch() != 0 && until.is_some_and(|u| std::time::Instant::now() < u)
    }
    /// The epoch is gone (a write found another's): writes stop, and the
    /// election hears of it.
    pub fn lose(&self) {
        self.hold(0);
        self.lost.notify_waiters();
    }
    /// Resolves when a write was refused because the epoch is no longer
    /// the leader's.
    pub async fn lost(&self) {
        self.lost.notified().await
    }
}

/// A thread with its own runtime, on which the store's etcd calls run: the
/// store's trait is synchronous (called from the fleet task), the client is
/// not.
struct Bridge {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Bridge {
    fn start() -> Result<Bridge, StoreError> {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = htx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = htx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| io("start", e.to_string()))?;
        let handle = hrx
            .recv()
            .map_err(|e| io("start", e.to_string()))?
            .map_err(|e| io("start", e))?;
        Ok(Bridge {
            handle,
            _stop: stop,
        })
    }

    /// Runs `fut` on the bridge's thread and waits for it; on a tokio
    /// worker thread the wait lets the worker's other tasks move elsewhere.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        // The bridge thread lives as long as `self` (it stops when `_stop`
        // drops), so the task always answers.
        let wait = move || rx.recv().expect("the etcd store's thread answers");
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

fn io(op: &'static str, reason: String) -> StoreError {
    StoreError::Io { op, reason }
}

fn from_etcd(op: &'static str, e: EtcdError) -> StoreError {
    io(op, e.to_string())
}

pub struct EtcdStore {
    prefix: String,
    etcd: Etcd,
    bridge: Bridge,
    fence: Arc<Fence>,
    /// What each model's demand chunks hold in etcd, so a save sends only
    /// the chunks that changed (`demand.rs`).
    demand_written: Mutex<demand::Written>,
}

/// The keys of one fleet under `prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }
    fn table(&self, table: &str) -> String {
        format!("{}/{table}/", self.prefix)
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn event_key(keys: &Keys, seq: u64) -> String {
    format!("{}{seq:020}", keys.table("events"))
}

impl EtcdStore {
    /// Connects to etcd and checks it answers: an unreachable etcd at start
    /// is an error naming the endpoints.
    pub fn connect(
        settings: &EtcdSettings,
        prefix: &str,
        fence: Arc<Fence>,
    ) -> Result<EtcdStore, StoreError> {
        let bridge = Bridge::start()?;
        let s = settings.clone();
        let etcd = bridge
            .run(async move { Etcd::new(&s) })
            .map_err(|e| StoreError::Open {
                path: "etcd".into(),
                reason: e.to_string(),
            })?;
        let store = EtcdStore {
            prefix: Keys::new(prefix).prefix,
            etcd,
            bridge,
            fence,
            demand_written: Mutex::new(demand::Written::default()),
        };
        let probe = store.etcd.clone();
        let key = store.keys().leader().into_bytes();
        store
            .bridge
            .run(async move { probe.get(&key).await })
            .map_err(|e| StoreError::Open {
                path: format!("etcd ({})", settings.endpoints.join(", ")),
                reason: e.to_string(),
            })?;
        Ok(store)
    }

    fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    fn on_bridge<T: Send + 'static, F>(&self, call: impl FnOnce(Etcd) -> F + Send + 'static) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let etcd = self.etcd.clone();
        self.bridge.run(async move { call(etcd).await })
    }

    /// Every key-value under `table/`, the key without its prefix.
    fn load(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.keys().table(table);
        let p = prefix.clone().into_bytes();
        let kvs = self
            .on_bridge(move |etcd| async move { etcd.range_prefix(&p).await })
            .map_err(|e| from_etcd("read", e))?;
        Ok(kvs
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                (key, kv.value)
            })
            .collect())
    }

    fn load_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
    ) -> Result<Vec<super::Row<T>>, StoreError> {
        Ok(self
            .load(table)?
            .into_iter()
            .map(|(k, v)| (k, super::decode_json(&v)))
            .collect())
    }

    /// Writes `ops` in one txn that holds only under this store's epoch.
    /// Too big: refused before sending. Epoch gone: refused, and the fence
    /// is told.
    fn write(&self, ops: Vec<RequestOp>) -> Result<(), StoreError> {
        let epoch = self.fence.epoch();
        if epoch == 0 {
            return Err(StoreError::Fenced {
                why: "this coordinator is not the leader".into(),
            });
        }
        let req = TxnRequest {
            compare: vec![etcd::created_at(self.keys().leader().as_bytes(), epoch)],
            success: ops,
            failure: vec![],
        };
        let size = prost::Message::encoded_len(&req);
        if size > etcd::MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge {
                key: "a write".into(),
                bytes: size,
                limit: etcd::MAX_REQUEST_BYTES,
            });
        }
        let resp = self
            .on_bridge(move |etcd| async move { etcd.txn(req).await })
            .map_err(|e| match e {
                EtcdError::QuotaFull(why) => StoreError::QuotaFull { why },
                other => from_etcd("write", other),
            })?;
        if !resp.succeeded {
            self.fence.lose();
            return Err(StoreError::Fenced {
                why: format!("epoch {epoch} is no longer the leader's"),
            });
        }
        Ok(())
    }

    fn put_op<T: Serialize>(&self, key: String, value: &T) -> Result<RequestOp, StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| io("write", e.to_string()))?;
        self.put_record(key, record::encode(&json))
    }

    /// A put of a stored record (`record::encode`d).
    fn put_record(&self, key: String, bytes: Vec<u8>) -> Result<RequestOp, StoreError> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge {
                key,
                bytes: bytes.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        Ok(etcd::put_op(key.into_bytes(), bytes, 0))
    }

    fn put_json<T: Serialize>(&self, table: &str, key: &str, value: &T) -> Result<(), StoreError> {
        let op = self.put_op(format!("{}{key}", self.keys().table(table)), value)?;
        self.write(vec![op])
    }

    fn remove(&self, table: &str, key: &str) -> Result<(), StoreError> {
        let key = format!("{}{key}", self.keys().table(table)).into_bytes();
        self.write(vec![etcd::delete_op(key, vec![])])
    }
}

impl Store for EtcdStore {
    fn load_models(&self) -> Result<Vec<Result<ModelRecord, DamagedRecord>>, StoreError> {
        Ok(super::model_records(self.load_json("models")?))
    }

    fn put_model(&self, model: &ModelRecord) -> Result<(), StoreError> {
        self.put_json("models", &model.name, model)
    }

    fn delete_model(&self, name: &str) -> Result<(), StoreError> {
        self.remove("models", name)
    }

    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError> {
        Ok(super::usable("node flags", self.load_json("nodes")?))
    }

    fn put_node_flags(&self, node: &str, flags: &NodeFlags) -> Result<(), StoreError> {
        self.put_json("nodes", node, flags)
    }

    /// In txns of at most 128 puts (etcd's default `--max-txn-ops`).
    fn put_many_node_flags(&self, nodes: &[(String, NodeFlags)]) -> Result<(), StoreError> {
        let table = self.keys().table("nodes");
        for batch in nodes.chunks(128) {
            let ops = batch
                .iter()
                .map(|(node, flags)| self.put_op(format!("{table}{node}"), flags))
                .collect::<Result<Vec<_>, _>>()?;
            self.write(ops)?;
        }
        Ok(())
    }

    fn append_events(&self, events: &[Event], capacity: usize) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let keys = self.keys();
        let mut ops = Vec::with_capacity(events.len() + 1);
        for e in events.iter().rev().take(capacity) {
            ops.push(self.put_op(event_key(&keys, e.seq), e)?);
        }
        // Trimmed in the same txn: everything older than the newest
        // `capacity` sequence numbers.
        let keep_from = (last.seq + 1).saturating_sub(capacity as u64);
        ops.push(etcd::delete_op(
            keys.table("events").into_bytes(),
            event_key(&keys, keep_from).into_bytes(),
        ));
        self.write(ops)
    }

    fn load_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let rows = self.load_json::<Event>("events")?;
        let skip = rows.len().saturating_sub(limit);
        Ok(rows
            .into_iter()
            .skip(skip)
            .filter_map(|(seq, e)| {
                e.map_err(|why| tracing::warn!("stored event {seq} skipped: {why}"))
                    .ok()
            })
            .collect())
    }

    fn load_demand(&self) -> Result<Vec<(String, DemandHistory)>, StoreError> {
        let (histories, written) = demand::load(self.load("demand")?);
        *self
            .demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = written;
        Ok(histories)
    }

    fn put_demand(&self, model: &str, history: &DemandHistory) -> Result<(), StoreError> {
        let table = self.keys().table("demand");
        let chunks = demand::Chunks::of(history);
        let mut written = self
            .demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changes = written.changes(model, &chunks);
        let mut ops = Vec::new();
        for suffix in &changes.put {
            let key = format!("{table}{}", demand::key(model, suffix));
            let stored = chunks.record(suffix).map_err(|e| io("write", e))?;
            ops.push(self.put_record(key, stored)?);
        }
        for suffix in &changes.delete {
            let key = format!("{table}{}", demand::key(model, suffix));
            ops.push(etcd::delete_op(key.into_bytes(), vec![]));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write(ops)?;
        written.saved(model, &chunks);
        Ok(())
    }

    fn delete_demand(&self, model: &str) -> Result<(), StoreError> {
        let (from, _) = demand::key_range(model);
        let start = format!("{}{from}", self.keys().table("demand"));
        let end = etcd::prefix_end(start.as_bytes());
        self.write(vec![etcd::delete_op(start.into_bytes(), end)])?;
        self.demand_written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(model);
        Ok(())
    }

    fn assignment_key(&self) -> Result<Vec<u8>, StoreError> {
        // Made once by whichever coordinator asks first; the others read it.
        let key = format!("{}assignment-hmac-sha256", self.keys().table("secrets")).into_bytes();
        let fresh: [u8; 32] = rand::random();
        let req = TxnRequest {
            compare: vec![etcd::absent(&key)],
            success: vec![
                etcd::put_op(key.clone(), fresh.to_vec(), 0),
                etcd::get_op(key.clone()),
            ],
            failure: vec![etcd::get_op(key.clone())],
        };
        let resp = self
            .on_bridge(move |etcd| async move { etcd.txn(req).await })
            .map_err(|e| from_etcd("write", e))?;
        let n = if resp.succeeded { 1 } else { 0 };
        let stored = etcd::got(&resp, n)
            .pop()
            .map(|kv| kv.value)
            .unwrap_or_default();
        if stored.len() != 32 {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: format!("{} bytes, expected 32", stored.len()),
            });
        }
        Ok(stored)
    }

    fn degraded(&self) -> Option<String> {
        None
    }

    fn backup(&self) -> Result<Vec<u8>, StoreError> {
        Err(io(
            "backup",
            "the store is in etcd: back it up with `etcdctl snapshot save FILE`".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::etcd::server::LocalEtcd;

    fn model(name: &str, spec: &str) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            spec_toml: spec.into(),
            created_unix_ms: 1,
            updated_unix_ms: 2,
            pinned_replicas: None,
        }
    }

    /// A store under `prefix` holding the leader key at its epoch.
    fn leading(etcd: &LocalEtcd, prefix: &str) -> (EtcdStore, Arc<Fence>) {
        let fence = Arc::new(Fence::default());
        let store = EtcdStore::connect(&etcd.settings(), prefix, fence.clone()).unwrap();
        let epoch = etcd.claim(&format!("{prefix}/leader"));
        fence.hold(epoch);
        (store, fence)
    }

    #[test]
    fn models_flags_events_and_demand_round_trip() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let (s, _) = leading(&etcd, "/t1");
        s.put_model(&model("a", "name = \"a\"")).unwrap();
        s.put_model(&model("b", "name = \"b\"")).unwrap();
        s.delete_model("a").unwrap();
        assert_eq!(
            s.load_models().unwrap(),
            vec![Ok(model("b", "name = \"b\""))]
        );

        s.put_node_flags(
            "gpu-1",
            &NodeFlags {
                cordoned: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.load_node_flags().unwrap()[0].1.cordoned);

        let events: Vec<Event> = (1..=10)
            .map(|seq| Event {
                seq,
                message: format!("e{seq}"),
                ..Default::default()
            })
            .collect();
        s.append_events(&events[..6], 4).unwrap();
        s.append_events(&events[6..], 4).unwrap();
        let seqs: Vec<u64> = s.load_events(100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10], "bounded, trimmed in the same txn");
        assert_eq!(s.load_events(2).unwrap()[0].seq, 9);

        let mut h = DemandHistory::new();
        for t in 0..400 {
            h.record(1_700_000_000 + t * 30, 5.0, 1.0, 0.0);
        }
        s.put_demand("m", &h).unwrap();
        let loaded = s.load_demand().unwrap();
        assert_eq!(loaded, vec![("m".to_string(), h.clone())]);
        let chunks = etcd.keys("/t1/demand/m/");
        assert!(chunks.len() > 2, "history is chunked: {chunks:?}");
        s.delete_demand("m").unwrap();
        assert!(s.load_demand().unwrap().is_empty());

        let key = s.assignment_key().unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(s.assignment_key().unwrap(), key);
    }

    /// Each demand chunk's key (under the model) and the revision it was
    /// last written at.
    fn chunk_revisions(s: &EtcdStore, model: &str) -> BTreeMap<String, i64> {
        let prefix = format!("{}{model}/", s.keys().table("demand"));
        let p = prefix.clone().into_bytes();
        s.on_bridge(move |etcd| async move { etcd.range_prefix(&p).await })
            .unwrap()
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                (key, kv.mod_revision)
            })
            .collect()
    }

    #[test]
    fn a_demand_save_sends_only_changed_chunks_and_deletes_aged_out_ones() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let (s, _) = leading(&etcd, "/t6");
        // An hour-aligned start, three hours of demand.
        let t0 = 1_699_920_000;
        let mut h = crate::coordinator::store::tests::recorded(t0, 3);
        s.put_demand("m", &h).unwrap();
        let first = chunk_revisions(&s, "m");
        assert_eq!(first.len(), 3 + 1, "{first:?}");

        h.record(t0 + 3 * 3600 - 5, 9.0, 9.0, 0.0);
        s.put_demand("m", &h).unwrap();
        let second = chunk_revisions(&s, "m");
        let rewritten: Vec<&String> = second
            .iter()
            .filter(|(k, rev)| first.get(*k) != Some(rev))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            rewritten,
            vec![&format!("coarse/{t0}"), &format!("fine/{}", t0 + 2 * 3600)]
        );

        // A new leader loads what is stored: saving it again sends nothing.
        etcd.delete("/t6/leader");
        let (again, _) = leading(&etcd, "/t6");
        assert_eq!(
            again.load_demand().unwrap(),
            vec![("m".to_string(), h.clone())]
        );
        again.put_demand("m", &h).unwrap();
        assert_eq!(chunk_revisions(&again, "m"), second);

        // A day later the first hours' fine buckets are reused: their
        // chunks go.
        for t in (3 * 3600..27 * 3600).step_by(10) {
            h.record(t0 + t, 1.0, 1.0, 0.0);
        }
        again.put_demand("m", &h).unwrap();
        let later = chunk_revisions(&again, "m");
        assert!(!later.contains_key(&format!("fine/{t0}")), "{later:?}");
        assert_eq!(later.keys().filter(|k| k.starts_with("fine/")).count(), 24);
        assert_eq!(again.load_demand().unwrap(), vec![("m".to_string(), h)]);
    }

    #[test]
    fn a_write_under_a_lost_epoch_is_refused_and_changes_nothing() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let (s, fence) = leading(&etcd, "/t2");
        s.put_model(&model("a", "v1")).unwrap();
        // Another coordinator takes over: the key is re-created, new epoch.
        etcd.delete("/t2/leader");
        let newer = etcd.claim("/t2/leader");
        assert!(newer > fence.epoch());
        let e = s.put_model(&model("a", "v2")).unwrap_err().to_string();
        assert!(e.contains("no longer the leader"), "{e}");
        assert_eq!(fence.epoch(), 0, "the fence says leadership is gone");
        assert_eq!(s.load_models().unwrap(), vec![Ok(model("a", "v1"))]);
        let e = s.put_model(&model("a", "v3")).unwrap_err().to_string();
        assert!(e.contains("not the leader"), "{e}");
    }

    #[test]
    fn an_oversized_value_is_refused_by_name_and_nothing_is_half_applied() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let (s, _) = leading(&etcd, "/t3");
        let big = Event {
            seq: 2,
            message: "x".repeat(MAX_VALUE_BYTES + 1),
            ..Default::default()
        };
        let small = Event {
            seq: 1,
            message: "ok".into(),
            ..Default::default()
        };
        let e = s.append_events(&[small, big], 100).unwrap_err().to_string();
        assert!(
            e.contains("events/00000000000000000002") && e.contains("limit"),
            "{e}"
        );
        assert!(
            s.load_events(10).unwrap().is_empty(),
            "the small event was not written either"
        );
    }

    #[test]
    fn two_prefixes_never_see_each_other() {
        let Some(etcd) = LocalEtcd::start_or_skip() else {
            return;
        };
        let (a, _) = leading(&etcd, "/fleet-a");
        let (b, _) = leading(&etcd, "/fleet-a2");
        a.put_model(&model("m", "a")).unwrap();
        b.put_model(&model("m", "b")).unwrap();
        assert_eq!(a.load_models().unwrap(), vec![Ok(model("m", "a"))]);
        assert_eq!(b.load_models().unwrap(), vec![Ok(model("m", "b"))]);
        assert_ne!(a.assignment_key().unwrap(), b.assignment_key().unwrap());
    }

    #[test]
    fn an_unreachable_etcd_at_start_is_named() {
        let port = crate::etcd::server::free_port();
        let settings = EtcdSettings {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            ..Default::default()
        };
        let e = EtcdStore::connect(&settings, "/x", Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port}")) && e.contains("unreachable"),
            "{e}"
        );
    }
}
