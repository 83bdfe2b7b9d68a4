//! Durable desired state of the fleet: models, node flags and the event log.
//! redb (a single file in the data dir) by default; behind a trait so a
//! replicated store (etcd with leader election) can follow.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::api::Event;

use super::predict::DemandHistory;

const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
const NODE_FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_flags");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEMAND: TableDefinition<&str, &[u8]> = TableDefinition::new("demand");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const ASSIGNMENT_KEY: &str = "assignment-hmac-sha256";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store {op} failed: {reason}")]
    Io { op: &'static str, reason: String },
    #[error("store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A model as the operator applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    /// The spec as applied, verbatim: re-parsed on load so the stored form
    /// can never drift from what the operator wrote.
    pub spec_toml: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    /// `model scale --replicas N` pins the count until `--auto`.
    pub pinned_replicas: Option<u32>,
}

/// Operator flags on a node; they outlive the node's sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFlags {
    pub cordoned: bool,
    pub draining: bool,
    /// Unix ms by which a drain must be finished.
    pub drain_deadline_unix_ms: i64,
    /// Models the operator asked to keep warm here (`warm start`).
    #[serde(default)]
    pub warm: Vec<String>,
    /// Models the operator asked to drop from the page cache (`warm evict`).
    #[serde(default)]
    pub evict: Vec<String>,
}

pub trait Store: Send {
    fn load_models(&self) -> Result<Vec<ModelRecord>, StoreError>;
    fn put_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    fn delete_model(&self, name: &str) -> Result<(), StoreError>;
    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError>;
    fn put_node_flags(&self, node: &str, flags: &NodeFlags) -> Result<(), StoreError>;
    /// Appends events, dropping the oldest beyond `capacity`.
    fn append_events(&self, events: &[Event], capacity: usize) -> Result<(), StoreError>;
    /// The newest `limit` events, oldest first.
    fn load_events(&self, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Each model's demand history, for prediction across restarts.
    fn load_demand(&self) -> Result<Vec<(String, DemandHistory)>, StoreError>;
    fn put_demand(&self, model: &str, history: &DemandHistory) -> Result<(), StoreError>;
    fn delete_demand(&self, model: &str) -> Result<(), StoreError>;
    /// The key that signs assignment tokens: made (32 random bytes) and kept
    /// on first use, the same ever after, so a restarted coordinator can
    /// check the tokens its predecessor handed out.
    fn assignment_key(&self) -> Result<Vec<u8>, StoreError>;
}

pub struct RedbStore {
    db: Database,
}

fn io<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

impl RedbStore {
    /// Opens (or creates) `DIR/gpufleet.redb`.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path = data_dir.join("gpufleet.redb");
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        // Create the tables once so readers never meet a missing table.
        let tx = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            tx.open_table(MODELS).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(NODE_FLAGS)
                .map_err(|e| open_err(e.to_string()))?;
            tx.open_table(EVENTS).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(DEMAND).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(SECRETS)
                .map_err(|e| open_err(e.to_string()))?;
        }
        tx.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbStore { db })
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(io("encode"))?;
        let tx = self.db.begin_write().map_err(io("write"))?;
        {
            let mut t = tx.open_table(table).map_err(io("write"))?;
            t.insert(key, bytes.as_slice()).map_err(io("write"))?;
        }
        tx.commit().map_err(io("commit"))
    }

    fn load_json<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(io("read"))?;
        let t = tx.open_table(table).map_err(io("read"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(io("read"))? {
            let (k, v) = row.map_err(io("read"))?;
            let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            out.push((k.value().to_string(), value));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn load_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        Ok(self
            .load_json::<ModelRecord>(MODELS)?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    fn put_model(&self, model: &ModelRecord) -> Result<(), StoreError> {
        self.put_json(MODELS, &model.name, model)
    }

    fn delete_model(&self, name: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io("write"))?;
        {
            let mut t = tx.open_table(MODELS).map_err(io("write"))?;
            t.remove(name).map_err(io("write"))?;
        }
        tx.commit().map_err(io("commit"))
    }

    fn load_node_flags(&self) -> Result<Vec<(String, NodeFlags)>, StoreError> {
        self.load_json(NODE_FLAGS)
    }

    fn put_node_flags(&self, node: &str, flags: &NodeFlags) -> Result<(), StoreError> {
        self.put_json(NODE_FLAGS, node, flags)
    }

    fn append_events(&self, events: &[Event], capacity: usize) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(io("write"))?;
        // Events are history, not desired state: losing the last second of
        // them in a power cut is acceptable, an fsync per tick is not.
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut t = tx.open_table(EVENTS).map_err(io("write"))?;
            for e in events {
                let bytes = serde_json::to_vec(e).map_err(io("encode"))?;
                t.insert(e.seq, bytes.as_slice()).map_err(io("write"))?;
            }
            let len = t.len().map_err(io("read"))? as usize;
            for _ in capacity..len {
                if t.pop_first().map_err(io("write"))?.is_none() {
                    break;
                }
            }
        }
        tx.commit().map_err(io("commit"))
    }

    fn load_demand(&self) -> Result<Vec<(String, DemandHistory)>, StoreError> {
        self.load_json(DEMAND)
    }

    fn put_demand(&self, model: &str, history: &DemandHistory) -> Result<(), StoreError> {
        self.put_json(DEMAND, model, history)
    }

    fn delete_demand(&self, model: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io("write"))?;
        {
            let mut t = tx.open_table(DEMAND).map_err(io("write"))?;
            t.remove(model).map_err(io("write"))?;
        }
        tx.commit().map_err(io("commit"))
    }

    fn assignment_key(&self) -> Result<Vec<u8>, StoreError> {
        let tx = self.db.begin_write().map_err(io("write"))?;
        let key = {
            let mut t = tx.open_table(SECRETS).map_err(io("write"))?;
            let stored = t
                .get(ASSIGNMENT_KEY)
                .map_err(io("read"))?
                .map(|v| v.value().to_vec());
            match stored {
                Some(key) if key.len() == 32 => key,
                Some(key) => {
                    return Err(StoreError::Corrupt {
                        key: format!("secrets/{ASSIGNMENT_KEY}"),
                        reason: format!("{} bytes, expected 32", key.len()),
                    })
                }
                None => {
                    let key: [u8; 32] = rand::random();
                    t.insert(ASSIGNMENT_KEY, key.as_slice())
                        .map_err(io("write"))?;
                    key.to_vec()
                }
            }
        };
        tx.commit().map_err(io("commit"))?;
        Ok(key)
    }

    fn load_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let tx = self.db.begin_read().map_err(io("read"))?;
        let t = tx.open_table(EVENTS).map_err(io("read"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(io("read"))?.rev().take(limit) {
            let (k, v) = row.map_err(io("read"))?;
            let e: Event = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                key: format!("event {}", k.value()),
                reason: e.to_string(),
            })?;
            out.push(e);
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            spec_toml: format!("name = \"{name}\""),
            created_unix_ms: 1,
            updated_unix_ms: 2,
            pinned_replicas: Some(3),
        }
    }

    #[test]
    fn models_and_flags_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_model(&model("a")).unwrap();
            s.put_model(&model("b")).unwrap();
            s.delete_model("a").unwrap();
            s.put_node_flags(
                "gpu-1",
                &NodeFlags {
                    cordoned: true,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.load_models().unwrap(), vec![model("b")]);
        let flags = s.load_node_flags().unwrap();
        assert_eq!(flags.len(), 1);
        assert!(flags[0].1.cordoned);
    }

    #[test]
    fn demand_history_survives_reopen_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = DemandHistory::new();
        h.record(1_700_000_000, 12.0, 3.0);
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_demand("m", &h).unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let loaded = s.load_demand().unwrap();
        assert_eq!(loaded.len(), 1);
        let f = loaded[0].1.forecast(1_700_000_010, 60);
        assert!(f.expected_ongoing > 0.0, "{f:?}");
        s.delete_demand("m").unwrap();
        assert!(s.load_demand().unwrap().is_empty());
    }

    #[test]
    fn the_assignment_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = RedbStore::open(dir.path())
            .unwrap()
            .assignment_key()
            .unwrap();
        assert_eq!(first.len(), 32);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.assignment_key().unwrap(), first);
        assert_eq!(s.assignment_key().unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            RedbStore::open(other.path())
                .unwrap()
                .assignment_key()
                .unwrap(),
            first,
            "each store has its own key"
        );
    }

    #[test]
    fn event_log_is_bounded_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let events: Vec<Event> = (1..=10)
            .map(|seq| Event {
                seq,
                message: format!("e{seq}"),
                ..Default::default()
            })
            .collect();
        s.append_events(&events, 4).unwrap();
        let loaded = s.load_events(100).unwrap();
        let seqs: Vec<u64> = loaded.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10]);
        assert_eq!(s.load_events(2).unwrap()[0].seq, 9);
    }
}
