//! One Automerge document: its deterministic genesis, loading from storage, and the bounded
//! queue of replicated changes that wait for their dependencies.
//!
//! Documents are flat: genesis creates every map a document will ever have, and nothing
//! creates an object after that. Two replicas that create "the same" nested object
//! concurrently would get two distinct objects, and Automerge would show only one of them,
//! hiding everything written into the other. Genesis is byte-identical everywhere (fixed actor,
//! fixed time), so every controller's genesis change has the same hash and they dedupe.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, ReadDoc};

use crate::error::MetaError;
use crate::storage::StoredDoc;

/// Which document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocId {
    /// Users, secrets, settings, controllers and chunkservers.
    Cluster,
    /// Shard `k` of the file metadata: `files/<k>`.
    Files(u32),
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Cluster => f.write_str("cluster"),
            DocId::Files(k) => write!(f, "files/{k}"),
        }
    }
}

impl FromStr for DocId {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Self, MetaError> {
        if s == "cluster" {
            return Ok(DocId::Cluster);
        }
        s.strip_prefix("files/")
            .and_then(|k| k.parse().ok())
            .map(DocId::Files)
            .ok_or_else(|| MetaError::UnknownDocument(s.to_owned()))
    }
}

/// The maps of the cluster document.
pub(crate) const CLUSTER_MAPS: [&str; 5] = [
    "users",
    "secrets",
    "settings",
    "controllers",
    "chunkservers",
];
/// The maps of a files document.
pub(crate) const FILES_MAPS: [&str; 3] = ["versions", "heads", "tags"];

fn map_names(id: DocId) -> &'static [&'static str] {
    match id {
        DocId::Cluster => &CLUSTER_MAPS,
        DocId::Files(_) => &FILES_MAPS,
    }
}

/// The genesis document: actor 16 zero bytes, commit time 0, one change creating the maps.
pub(crate) fn genesis(id: DocId) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([0u8; 16]));
    let mut tx = doc.transaction();
    for name in map_names(id) {
        tx.put_object(automerge::ROOT, *name, ObjType::Map)
            .expect("putting a map on a fresh root cannot fail");
    }
    tx.commit_with(CommitOptions::default().with_time(0));
    doc
}

/// Split concatenated Automerge change chunks (the output of `save_after`) and parse each.
/// Never panics; a malformed or corrupted chunk is an error.
pub(crate) fn parse_changes(mut bytes: &[u8]) -> Result<Vec<Change>, String> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 9 || bytes[..4] != MAGIC {
            return Err(format!(
                "change {} does not start with the magic bytes",
                out.len()
            ));
        }
        let mut rest = &bytes[9..];
        let before = rest.len();
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|e| format!("change {}: bad length: {e}", out.len()))?;
        let header = 9 + (before - rest.len());
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
            .filter(|&t| t <= bytes.len())
            .ok_or_else(|| format!("change {} is truncated", out.len()))?;
        let change =
            Change::try_from(&bytes[..total]).map_err(|e| format!("change {}: {e}", out.len()))?;
        // Automerge does not verify the header checksum (the first 4 bytes of the change
        // hash); without this, a flipped bit would turn into a different, "valid" change.
        if bytes[4..8] != change.hash().0[..4] {
            return Err(format!("change {} fails its checksum", out.len()));
        }
        out.push(change);
        bytes = &bytes[total..];
    }
    Ok(out)
}

/// Bounds of the queue of changes waiting for dependencies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingLimits {
    pub changes: usize,
    pub bytes: usize,
}

/// What applying a batch of changes did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Changes newly applied (their timestamps, for the clock).
    pub timestamps: Vec<i64>,
    pub rejected: usize,
    pub first_rejection: Option<String>,
    pub dropped: usize,
}

/// A loaded document and its replication bookkeeping.
pub(crate) struct Document {
    pub id: DocId,
    pub am: Automerge,
    maps: Vec<ObjId>,
    pending: VecDeque<Change>,
    pending_bytes: usize,
    /// Heads as of the last durable write; `save_after(persisted_heads)` is what to persist.
    pub persisted_heads: Vec<ChangeHash>,
    pub increments: usize,
    pub increment_bytes: usize,
    /// Compactions made of this document since it was opened: a background snapshot taken
    /// before the last of them is stale ([`crate::compactor`]).
    pub compactions: u64,
}

impl Document {
    /// Load `id` from storage, or create it from genesis (`fresh` = true) when nothing is
    /// stored. The document gets a fresh random actor: a new incarnation.
    pub fn open(id: DocId, stored: StoredDoc) -> Result<(Self, bool), MetaError> {
        let corrupt = |reason: String| MetaError::CorruptDocument {
            doc: id.to_string(),
            reason,
        };
        let fresh = stored.is_empty();
        let (increments, increment_bytes) = (
            stored.increments.len(),
            stored.increments.iter().map(Vec::len).sum(),
        );
        let mut am = if fresh {
            genesis(id)
        } else {
            let mut am = match &stored.snapshot {
                Some(snap) => {
                    Automerge::load(snap).map_err(|e| corrupt(format!("snapshot: {e}")))?
                }
                None => Automerge::new(),
            };
            // One `apply_changes` for all increments: each call costs time in proportion to
            // the document, so applying the up to `compact_after_increments` increments a
            // crash leaves one by one took 20 s at 100k files instead of a fraction of one.
            let mut changes = Vec::new();
            for (i, inc) in stored.increments.iter().enumerate() {
                changes.extend(
                    parse_changes(inc).map_err(|e| corrupt(format!("increment {i}: {e}")))?,
                );
            }
            am.apply_changes(changes)
                .map_err(|e| corrupt(format!("increments: {e}")))?;
            if !am.get_missing_deps(&[]).is_empty() {
                return Err(corrupt("changes with missing dependencies".into()));
            }
            am
        };
        am.set_actor(ActorId::random());
        let mut maps = Vec::new();
        for name in map_names(id) {
            match am.get(automerge::ROOT, *name) {
                Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => maps.push(obj),
                _ => return Err(corrupt(format!("map {name:?} is missing"))),
            }
        }
        let persisted_heads = am.get_heads();
        Ok((
            Document {
                id,
                am,
                maps,
                pending: VecDeque::new(),
                pending_bytes: 0,
                persisted_heads,
                increments,
                increment_bytes,
                compactions: 0,
            },
            fresh,
        ))
    }

    /// The object id of map `name` (one of this document's genesis maps).
    pub fn map(&self, name: &str) -> &ObjId {
        let i = map_names(self.id)
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("document {} has no map {name}", self.id));
        &self.maps[i]
    }

    /// Which of this document's genesis maps `obj` (an object of a decoded change) is.
    pub fn map_name(&self, obj: &automerge::legacy::ObjectId) -> Option<&'static str> {
        let automerge::legacy::ObjectId::Id(automerge::legacy::OpId(counter, actor)) = obj else {
            return None;
        };
        let i = self
            .maps
            .iter()
            .position(|m| matches!(m, ObjId::Id(c, a, _) if c == counter && a == actor))?;
        map_names(self.id).get(i).copied()
    }

    /// Run `f` in a transaction committed with `time` (an HLC timestamp). On error nothing is
    /// committed.
    pub fn transact<R>(
        &mut self,
        time: u64,
        f: impl FnOnce(&mut Transaction<'_>, &MapIds<'_>) -> Result<R, AutomergeError>,
    ) -> Result<R, MetaError> {
        let ids = MapIds {
            names: map_names(self.id),
            maps: &self.maps,
        };
        let mut tx = self.am.transaction();
        match f(&mut tx, &ids) {
            Ok(r) => {
                tx.commit_with(CommitOptions::default().with_time(time as i64));
                Ok(r)
            }
            Err(e) => {
                tx.rollback();
                Err(MetaError::Internal {
                    doc: self.id.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Apply `incoming` and any queued changes whose dependencies are now present; queue the
    /// rest, dropping the oldest queued changes beyond `limits` (anti-entropy sync fetches them
    /// again).
    pub fn apply(&mut self, incoming: Vec<Change>, limits: PendingLimits) -> Applied {
        let mut out = Applied::default();
        let mut waiting: Vec<Change> = self.pending.drain(..).collect();
        self.pending_bytes = 0;
        let mut seen: HashSet<ChangeHash> = waiting.iter().map(Change::hash).collect();
        for c in incoming {
            if seen.insert(c.hash()) {
                waiting.push(c);
            }
        }
        // Drop changes we already have.
        waiting.retain(|c| !self.am.get_missing_deps(&[c.hash()]).is_empty());

        // Pick changes whose dependencies are present or picked, until no progress.
        let mut ready = Vec::new();
        let mut ready_hashes = HashSet::new();
        loop {
            let mut progressed = false;
            let mut still = Vec::new();
            for c in waiting {
                let missing = self.am.get_missing_deps(c.deps());
                let ok = c
                    .deps()
                    .iter()
                    .all(|d| ready_hashes.contains(d) || !missing.contains(d));
                if ok {
                    ready_hashes.insert(c.hash());
                    ready.push(c);
                    progressed = true;
                } else {
                    still.push(c);
                }
            }
            waiting = still;
            if !progressed || waiting.is_empty() {
                break;
            }
        }

        if !ready.is_empty() {
            let timestamps: Vec<i64> = ready.iter().map(Change::timestamp).collect();
            match self.am.apply_changes(ready.clone()) {
                Ok(()) => out.timestamps = timestamps,
                Err(_) => {
                    // Find the culprits one by one; the rest still applies.
                    for c in ready {
                        let ts = c.timestamp();
                        if self.am.get_missing_deps(&[c.hash()]).is_empty() {
                            continue;
                        }
                        match self.am.apply_changes([c]) {
                            Ok(()) => out.timestamps.push(ts),
                            Err(e) => {
                                out.rejected += 1;
                                out.first_rejection.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                }
            }
        }

        for c in waiting {
            self.pending_bytes += c.raw_bytes().len();
            self.pending.push_back(c);
        }
        while self.pending.len() > limits.changes || self.pending_bytes > limits.bytes {
            let Some(old) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= old.raw_bytes().len();
            out.dropped += 1;
        }
        out
    }
}

/// Object ids of a document's maps, by name, for use inside a transaction.
pub(crate) struct MapIds<'a> {
    names: &'static [&'static str],
    maps: &'a [ObjId],
}

impl MapIds<'_> {
    pub fn get(&self, name: &str) -> &ObjId {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no map {name}"));
        &self.maps[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_byte_identical() {
        for id in [DocId::Cluster, DocId::Files(3)] {
            let a = genesis(id);
            let b = genesis(id);
            assert_eq!(a.save(), b.save());
            assert_eq!(a.get_heads(), b.get_heads());
        }
        assert_ne!(
            genesis(DocId::Cluster).get_heads(),
            genesis(DocId::Files(0)).get_heads()
        );
    }

    #[test]
    fn doc_ids_round_trip() {
        for id in [DocId::Cluster, DocId::Files(0), DocId::Files(15)] {
            assert_eq!(id.to_string().parse::<DocId>().unwrap(), id);
        }
        assert!("files/x".parse::<DocId>().is_err());
        assert!("nope".parse::<DocId>().is_err());
    }

    #[test]
    fn parse_changes_splits_concatenated_changes_and_rejects_truncation() {
        let (mut d, _) = Document::open(DocId::Files(0), StoredDoc::default()).unwrap();
        let base = d.am.get_heads();
        for i in 0..3u64 {
            d.transact(i, |tx, m| {
                tx.put(m.get("heads"), format!("k{i}"), "v").map(|_| ())
            })
            .unwrap();
        }
        let bytes = d.am.save_after(&base);
        assert_eq!(parse_changes(&bytes).unwrap().len(), 3);
        for cut in [1, 5, 9, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(parse_changes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_changes(&[]).unwrap().is_empty());
    }
}
