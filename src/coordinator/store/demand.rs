//! Demand history as both stores keep it: in chunks of an hour of fine
//! buckets or a day of coarse ones, one record each under
//! `<model>/fine/<hour>` or `<model>/coarse/<day>`, so a save writes the
//! chunks that changed (the current hour's and day's, and the oldest ones
//! while their slots are reused) instead of a day-old history's ~0.6 MB.
//! Model names are lowercase letters, digits and `-` (config's name rule),
//! so the first `/` of a key always ends the model's name.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::Deserialize;

use crate::coordinator::predict::{Bucket, DemandHistory};

use super::record;

const FINE_CHUNK_S: i64 = 3600;
const COARSE_CHUNK_S: i64 = 86_400;

/// The stored key of a model's chunk (`suffix`: `fine/<hour>`).
pub(super) fn key(model: &str, suffix: &str) -> String {
    format!("{model}/{suffix}")
}

/// The keys of all of `model`'s chunks: `from..to`.
pub(super) fn key_range(model: &str) -> (String, String) {
    // `0` follows `/`: every key that starts `<model>/`, and no other.
    (format!("{model}/"), format!("{model}0"))
}

/// A chunk's key split into model and suffix; None for a key without `/`
/// (a whole history, as stores before chunking kept it).
pub(super) fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// A chunk's buckets, and a hash of them that tells a changed chunk
/// without encoding it: a save encodes only the chunks it writes.
struct Chunk<'h> {
    buckets: Vec<&'h Bucket>,
    hash: u64,
}

fn hash_of<'b>(buckets: impl IntoIterator<Item = &'b Bucket>) -> u64 {
    // SipHash with fixed keys: the same on every run, as it must be for
    // hashes of chunks read back from the store.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in buckets {
        b.hash(&mut h);
    }
    h.finish()
}

/// A history in chunks, by key suffix (`fine/<hour>`).
pub(super) struct Chunks<'h> {
    by_suffix: BTreeMap<String, Chunk<'h>>,
}

impl<'h> Chunks<'h> {
    pub(super) fn of(history: &'h DemandHistory) -> Chunks<'h> {
        // Grouped by (ring, chunk start), the key formatted once a chunk:
        // a day's history is thousands of buckets and a few dozen chunks.
        let mut grouped: BTreeMap<(&'static str, i64), Vec<&Bucket>> = BTreeMap::new();
        for (ring, buckets) in history.stored() {
            let span = if ring == "fine" {
                FINE_CHUNK_S
            } else {
                COARSE_CHUNK_S
            };
            for b in buckets {
                let chunk = b.start().div_euclid(span) * span;
                grouped.entry((ring, chunk)).or_default().push(b);
            }
        }
        let by_suffix = grouped
            .into_iter()
            .map(|((ring, chunk), buckets)| {
                let hash = hash_of(buckets.iter().copied());
                (format!("{ring}/{chunk}"), Chunk { buckets, hash })
            })
            .collect();
        Chunks { by_suffix }
    }

    /// The stored record of the chunk `suffix` (one of this history's).
    pub(super) fn record(&self, suffix: &str) -> Result<Vec<u8>, String> {
        let buckets = self
            .by_suffix
            .get(suffix)
            .map(|c| c.buckets.as_slice())
            .unwrap_or_default();
        let json = serde_json::to_vec(&buckets).map_err(|e| e.to_string())?;
        Ok(record::encode(&json))
    }
}

/// A whole history, as stores before chunking kept it.
#[derive(Deserialize)]
struct Whole {
    fine: Vec<Bucket>,
    coarse: Vec<Bucket>,
}

/// The histories in a demand table's rows (key, stored record), and what
/// their chunks hold. A chunk that cannot be read is left out (and named in
/// the log); it is rewritten or deleted at the model's next save. A model
/// kept whole (by a store before chunking) is not known as written, so its
/// next save reads its keys again and replaces the whole record. Buckets
/// that meet in a slot keep the newer, so a whole record next to chunks (a
/// store used by an older coordinator after a newer one) adds what it has.
pub(super) fn load(rows: Vec<(String, Vec<u8>)>) -> (Vec<(String, DemandHistory)>, Written) {
    let mut by_model: BTreeMap<String, (Vec<Bucket>, Vec<Bucket>)> = BTreeMap::new();
    let mut written = Written::default();
    let mut whole = Vec::new();
    for (key, stored) in rows {
        match split(&key) {
            Some((model, suffix)) => {
                let buckets = super::decode_json::<Vec<Bucket>>(&stored);
                written.note(model, suffix, buckets.as_ref().ok().map(hash_of));
                let (fine, coarse) = by_model.entry(model.to_string()).or_default();
                match buckets {
                    Ok(b) if suffix.starts_with("fine/") => fine.extend(b),
                    Ok(b) => coarse.extend(b),
                    Err(why) => {
                        tracing::error!("stored demand history chunk `{key}` ignored: {why}")
                    }
                }
            }
            None => {
                match super::decode_json::<Whole>(&stored) {
                    Ok(w) => {
                        let (fine, coarse) = by_model.entry(key.clone()).or_default();
                        fine.extend(w.fine);
                        coarse.extend(w.coarse);
                    }
                    Err(why) => tracing::error!("stored demand history of `{key}` ignored: {why}"),
                }
                whole.push(key);
            }
        }
    }
    for model in whole {
        written.forget(&model);
    }
    let histories = by_model
        .into_iter()
        .map(|(model, (fine, coarse))| (model, DemandHistory::from_stored(fine, coarse)))
        .collect();
    (histories, written)
}

/// What a model's save must do to the stored chunks.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ChunkChanges {
    /// Suffixes of the chunks to write.
    pub put: Vec<String>,
    /// Suffixes of stored chunks the history no longer has.
    pub delete: Vec<String>,
}

/// What each model's chunks hold in the store, as last read or written: a
/// hash per chunk, not its bytes (those would be the whole histories again
/// in memory, ~0.6–0.9 MB a model).
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Model → chunk suffix → the hash of its buckets (None: stored, but
    /// unreadable, so rewritten or deleted at the next save).
    models: HashMap<String, HashMap<String, Option<u64>>>,
}

impl Written {
    /// Whether the store's chunks of `model` are known here.
    pub(super) fn knows(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Notes that `model`'s chunks are known: none but those noted.
    pub(super) fn know(&mut self, model: &str) {
        self.models.entry(model.to_string()).or_default();
    }

    /// Notes a stored chunk of `model` and the hash of its buckets (None:
    /// they cannot be read).
    pub(super) fn note(&mut self, model: &str, suffix: &str, hash: Option<u64>) {
        self.models
            .entry(model.to_string())
            .or_default()
            .insert(suffix.to_string(), hash);
    }

    /// Notes a stored chunk of `model` from its record.
    pub(super) fn note_record(&mut self, model: &str, suffix: &str, stored: &[u8]) {
        let hash = super::decode_json::<Vec<Bucket>>(stored)
            .ok()
            .map(|b| hash_of(&b));
        self.note(model, suffix, hash);
    }

    /// The chunks of `now` that differ from the stored ones, and the stored
    /// ones `now` lacks. A model not known here has all its chunks written
    /// and none deleted.
    pub(super) fn changes(&self, model: &str, now: &Chunks) -> ChunkChanges {
        let stored = self.models.get(model);
        let put = now
            .by_suffix
            .iter()
            .filter(|(suffix, chunk)| {
                stored.and_then(|s| s.get(*suffix)).copied().flatten() != Some(chunk.hash)
            })
            .map(|(suffix, _)| suffix.clone())
            .collect();
        let delete = stored
            .into_iter()
            .flat_map(|s| s.keys())
            .filter(|suffix| !now.by_suffix.contains_key(*suffix))
            .cloned()
            .collect();
        ChunkChanges { put, delete }
    }

    /// `model`'s chunks are now `now` in the store.
    pub(super) fn saved(&mut self, model: &str, now: &Chunks) {
        let hashes = now
            .by_suffix
            .iter()
            .map(|(suffix, chunk)| (suffix.clone(), Some(chunk.hash)))
            .collect();
        self.models.insert(model.to_string(), hashes);
    }

    pub(super) fn forget(&mut self, model: &str) {
        self.models.remove(model);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::recorded;
    use super::*;

    #[test]
    fn chunks_make_the_history_again_in_any_order() {
        let h = recorded(1_700_000_000, 30);
        let chunks = Chunks::of(&h);
        let suffixes: Vec<&String> = chunks.by_suffix.keys().collect();
        assert!(suffixes.iter().any(|k| k.starts_with("fine/")));
        assert!(suffixes.iter().any(|k| k.starts_with("coarse/")));
        let rows = suffixes
            .iter()
            .rev()
            .map(|s| (key("m", s), chunks.record(s).unwrap()))
            .collect();
        let (loaded, written) = load(rows);
        assert_eq!(loaded, vec![("m".to_string(), h.clone())]);
        assert_eq!(written.changes("m", &chunks), ChunkChanges::default());
    }

    #[test]
    fn a_new_bucket_changes_only_its_chunks() {
        let mut h = recorded(1_700_000_000, 2);
        let mut written = Written::default();
        let before = Chunks::of(&h);
        assert_eq!(
            written.changes("m", &before).put.len(),
            before.by_suffix.len()
        );
        written.saved("m", &before);
        assert_eq!(written.changes("m", &before), ChunkChanges::default());
        h.record(1_700_000_000 + 2 * 3600 + 5, 3.0, 1.0, 0.0);
        let after = Chunks::of(&h);
        let changes = written.changes("m", &after);
        assert_eq!(
            changes.put.len(),
            2,
            "the current hour and day: {changes:?}"
        );
        assert!(changes.delete.is_empty());
    }
}
