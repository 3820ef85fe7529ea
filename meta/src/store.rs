//! [`MetaStore`]: the controller's metadata, owned by one task, and the plumbing every
//! operation shares (opening, committing, persisting, compaction).
//!
//! The operations themselves live beside their data: `files` (versions, heads, tags),
//! `cluster` (users, secrets, settings, membership) and `replica` (replication hooks).

use std::collections::HashMap;

use automerge::ChangeHash;

use crate::compactor::{Compactor, Cover, Gone, Request, Saved};
use crate::document::{DocId, Document};
use crate::error::MetaError;
use crate::hlc::{Clock, DEFAULT_MAX_AHEAD_MS, Timestamp};
use crate::names::NodeId;
use crate::storage::DocStorage;

/// A document is compacted inline, even with a background compactor, once its increments grow
/// past this many times the limits (the worker is busy or stuck): storage and load time stay
/// bounded.
const INLINE_COMPACTION_FACTOR: usize = 4;

/// Default number of `files/<k>` documents for a new cluster.
pub const DEFAULT_SHARDS: u32 = 16;
/// Largest shard count accepted.
pub const MAX_SHARDS: u32 = 4096;

const META_NODE_ID: &str = "node_id";
const META_SHARDS: &str = "shards";
const META_HLC: &str = "hlc";
const META_STORE_ID: &str = "store_id";

/// Argon2id cost for new password hashes (verification reads the cost from the hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordCost {
    /// The argon2 crate's defaults (OWASP: 19 MiB, 2 iterations, 1 lane).
    fn default() -> Self {
        PasswordCost {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
            parallelism: argon2::Params::DEFAULT_P_COST,
        }
    }
}

/// Size limits. Every queue and input is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest change batch `apply_changes` accepts, and largest sync message.
    pub max_message_bytes: usize,
    /// Changes waiting for dependencies, per document.
    pub max_pending_changes: usize,
    pub max_pending_bytes: usize,
    /// Compact a document (new snapshot, increments dropped) after this many increments...
    pub compact_after_increments: usize,
    /// ...or this many increment bytes.
    pub compact_after_bytes: usize,
    /// Most chunks in one file version.
    pub max_chunks_per_version: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_pending_changes: 4096,
            max_pending_bytes: 32 << 20,
            compact_after_increments: 1000,
            compact_after_bytes: 8 << 20,
            max_chunks_per_version: 1 << 20,
        }
    }
}

/// How to open a [`MetaStore`].
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    /// Shard count when creating a new store; an existing store keeps its own.
    pub shards: u32,
    /// How far ahead of our wall clock a remote HLC timestamp may be.
    pub max_clock_ahead_ms: u64,
    pub password_cost: PasswordCost,
    pub limits: Limits,
}

impl Config {
    pub fn new(node_id: NodeId) -> Self {
        Config {
            node_id,
            shards: DEFAULT_SHARDS,
            max_clock_ahead_ms: DEFAULT_MAX_AHEAD_MS,
            password_cost: PasswordCost::default(),
            limits: Limits::default(),
        }
    }
}

/// Counters for metrics and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Remote timestamps rejected as too far ahead of our clock.
    pub clock_rejections: u64,
    /// Pending changes dropped because a pending queue was full.
    pub pending_dropped: u64,
    /// Replicated changes Automerge refused (for example a reused actor sequence number).
    pub changes_rejected: u64,
    /// Changes currently waiting for dependencies, all documents.
    pub pending: usize,
}

/// The result of a mutation, to replicate: push `changes` to peers (they pass it to
/// `apply_changes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub doc: DocId,
    /// Concatenated raw Automerge changes (as `save_after` produces).
    pub changes: Vec<u8>,
    /// The document's heads after the commit.
    pub heads: Vec<ChangeHash>,
}

/// The controller's metadata core. Not thread-safe by design: one task owns it.
pub struct MetaStore {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    pub(crate) storage: Box<dyn DocStorage>,
    /// `docs[0]` is the cluster document, `docs[k + 1]` is `files/<k>`.
    pub(crate) docs: Vec<Document>,
    pub(crate) sync_states: HashMap<(String, DocId), automerge::sync::State>,
    pub(crate) pending_dropped: u64,
    pub(crate) changes_rejected: u64,
    /// This store's incarnation id (see [`MetaStore::lineage`]).
    store_id: String,
    /// Whether this open created the store.
    created: bool,
    /// When (this process's monotonic ms) each lone tombstone was first seen here; see
    /// `MetaStore::purge_expired_at`. Not persisted: a restart only delays purges.
    pub(crate) tombstones_seen: HashMap<String, u64>,
    /// Tag index and file counts, per document, recomputed for a document when it changed.
    pub(crate) derived: crate::derived::Derived,
    /// Saves documents off this thread, when enabled ([`MetaStore::compact_in_background`]).
    compactor: Option<Compactor>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("node", &self.config.node_id)
            .field("shards", &self.shards())
            .finish_non_exhaustive()
    }
}

fn meta_u64(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<u64>, MetaError> {
    bytes
        .map(|b| {
            <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| MetaError::CorruptDocument {
                    doc: format!("meta:{what}"),
                    reason: format!("{} bytes, expected 8", b.len()),
                })
        })
        .transpose()
}

impl MetaStore {
    /// Open the store kept in `storage`, creating every document from genesis on first start.
    /// Each open is a new incarnation (fresh Automerge actors). Fails, naming the document, if
    /// a stored document is corrupt.
    pub fn open(mut storage: Box<dyn DocStorage>, config: Config) -> Result<Self, MetaError> {
        match storage.get_meta(META_NODE_ID)? {
            Some(stored) if stored != config.node_id.as_str().as_bytes() => {
                return Err(MetaError::NodeMismatch {
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    given: config.node_id.to_string(),
                });
            }
            Some(_) => {}
            None => storage.put_meta(META_NODE_ID, config.node_id.as_str().as_bytes())?,
        }
        let shards = match meta_u64(storage.get_meta(META_SHARDS)?, META_SHARDS)? {
            Some(s) => u32::try_from(s).unwrap_or(u32::MAX),
            None => {
                storage.put_meta(META_SHARDS, &u64::from(config.shards).to_be_bytes())?;
                config.shards
            }
        };
        if shards == 0 || shards > MAX_SHARDS {
            return Err(MetaError::invalid(
                "shards",
                format!("{shards} is not in 1..={MAX_SHARDS}"),
            ));
        }
        let high_water = meta_u64(storage.get_meta(META_HLC)?, META_HLC)?.unwrap_or(0);
        let clock = Clock::resume(Timestamp(high_water), config.max_clock_ahead_ms);

        let ids = std::iter::once(DocId::Cluster).chain((0..shards).map(DocId::Files));
        let mut docs = Vec::with_capacity(shards as usize + 1);
        let mut created = false;
        for id in ids {
            let name = id.to_string();
            let (doc, fresh) = Document::open(id, storage.load(&name)?)?;
            if fresh {
                storage.compact(&name, &doc.am.save())?;
                created |= id == DocId::Cluster;
            }
            docs.push(doc);
        }
        let store_id = match storage.get_meta(META_STORE_ID)? {
            Some(b) => String::from_utf8(b).map_err(|_| MetaError::CorruptDocument {
                doc: format!("meta:{META_STORE_ID}"),
                reason: "not UTF-8".into(),
            })?,
            None => {
                let id = format!("{:032x}", rand::random::<u128>());
                storage.put_meta(META_STORE_ID, id.as_bytes())?;
                created = true;
                id
            }
        };
        let mut store = MetaStore {
            config,
            clock,
            storage,
            docs,
            sync_states: HashMap::new(),
            pending_dropped: 0,
            changes_rejected: 0,
            store_id,
            created,
            tombstones_seen: HashMap::new(),
            derived: Default::default(),
            compactor: None,
        };
        // Built here, off the request path: `list TAG` and `status` read it from the start.
        for id in store.file_docs() {
            store.derived.insert(id, store.derive(id)?);
        }
        if !store.lineage()?.contains(&store.store_id) {
            // A new store (or one created before it recorded itself): its incarnation joins
            // the lineage, with the cluster's shard count. Anti-entropy carries it to peers.
            let id = store.store_id.clone();
            let now = store.clock.high_water().wall_ms();
            store.record_creation(&id, now)?;
        }
        Ok(store)
    }

    /// This store's incarnation id: new whenever a data directory starts empty.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Whether this open created the store (a new or wiped data directory).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Group commit: with `true`, commits are durable only after [`MetaStore::sync`] (the
    /// metadata owner syncs once per batch of jobs, before acknowledging any of them).
    pub fn defer_sync(&mut self, deferred: bool) {
        self.storage.defer_sync(deferred);
    }

    /// Makes every commit so far durable.
    pub fn sync(&mut self) -> Result<(), MetaError> {
        Ok(self.storage.sync()?)
    }

    /// Whether a commit is not durable yet (only with deferred syncs).
    pub fn unsynced(&self) -> bool {
        self.storage.unsynced()
    }

    /// Give the storage back (tests reopen a store from it to simulate a restart).
    pub fn into_storage(self) -> Box<dyn DocStorage> {
        self.storage
    }

    pub fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// Number of `files/<k>` documents.
    pub fn shards(&self) -> u32 {
        (self.docs.len() - 1) as u32
    }

    /// The HLC high-water mark (persisted with every commit).
    pub fn clock_high_water(&self) -> Timestamp {
        self.clock.high_water()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            clock_rejections: self.clock.rejected(),
            pending_dropped: self.pending_dropped,
            changes_rejected: self.changes_rejected,
            pending: self.docs.iter().map(Document::pending).sum(),
        }
    }

    pub(crate) fn slot(&self, id: DocId) -> Result<usize, MetaError> {
        match id {
            DocId::Cluster => Ok(0),
            DocId::Files(k) if k < self.shards() => Ok(k as usize + 1),
            DocId::Files(_) => Err(MetaError::UnknownDocument(id.to_string())),
        }
    }

    pub(crate) fn doc(&self, id: DocId) -> Result<&Document, MetaError> {
        Ok(&self.docs[self.slot(id)?])
    }

    pub(crate) fn doc_mut(&mut self, id: DocId) -> Result<&mut Document, MetaError> {
        let slot = self.slot(id)?;
        Ok(&mut self.docs[slot])
    }

    /// Write what `id` has that storage lacks, as one synced increment with the HLC high-water
    /// mark; compact when the increments grow past the limits. `None` if nothing was new.
    ///
    /// If the write fails the in-memory document keeps the change and the next successful
    /// persist writes it (the heads marker only moves on success).
    ///
    /// Every change of every document passes through here, whether made locally or
    /// replicated, so this is also where the derived state ([`crate::derived`]) follows the
    /// documents: the same bytes tell it which files and tags changed.
    pub(crate) fn persist(&mut self, id: DocId) -> Result<Option<Commit>, MetaError> {
        self.install_compaction();
        let high_water = self.clock.high_water().0.to_be_bytes();
        let slot = self.slot(id)?;
        let doc = &self.docs[slot];
        let bytes = doc.am.save_after(&doc.persisted_heads);
        if bytes.is_empty() {
            return Ok(None);
        }
        self.storage
            .append(&id.to_string(), &bytes, &[(META_HLC, &high_water)])?;
        if let DocId::Files(_) = id {
            let reader = crate::files::Reader::new(self, id);
            self.derived
                .advance(doc, &doc.persisted_heads, &bytes, &reader);
        }
        let doc = &mut self.docs[slot];
        doc.persisted_heads = doc.am.get_heads();
        doc.increments += 1;
        doc.increment_bytes += bytes.len();
        let heads = doc.persisted_heads.clone();
        let limits = self.config.limits;
        let over = |factor: usize| {
            doc.increments >= limits.compact_after_increments.saturating_mul(factor)
                || doc.increment_bytes >= limits.compact_after_bytes.saturating_mul(factor)
        };
        let (due, overdue) = (over(1), over(INLINE_COMPACTION_FACTOR));
        if due && !self.compact_later(id, overdue) {
            // The commit is already durable; a failed compaction only delays the next one.
            if let Err(e) = self.compact(id) {
                tracing::warn!(doc = %id, error = %e, "compaction failed");
            }
        }
        Ok(Some(Commit {
            doc: id,
            changes: bytes,
            heads,
        }))
    }

    /// Replace `id`'s stored increments by one snapshot, on this thread. Runs when the
    /// thresholds trip and no background compactor takes the document, and at shutdown.
    pub fn compact(&mut self, id: DocId) -> Result<(), MetaError> {
        let slot = self.slot(id)?;
        let doc = &mut self.docs[slot];
        let snapshot = doc.am.save();
        self.storage.compact(&id.to_string(), &snapshot)?;
        doc.persisted_heads = doc.am.get_heads();
        doc.increments = 0;
        doc.increment_bytes = 0;
        doc.compactions += 1;
        Ok(())
    }

    /// From now on, documents are saved on a worker thread (`compactor`) instead of
    /// on the thread that owns this store, which only clones them. The owner thread of a
    /// controller turns it on; a store without it compacts inline.
    pub fn compact_in_background(&mut self) {
        if self.compactor.is_some() {
            return;
        }
        match Compactor::spawn() {
            Ok(c) => self.compactor = Some(c),
            Err(e) => tracing::warn!(error = %e, "no compaction thread; compacting inline"),
        }
    }

    /// Hands document `id` to the background compactor. `false`: compact it inline now (no
    /// compactor, or it is busy and the document is over the hard limit).
    fn compact_later(&mut self, id: DocId, over_hard_limit: bool) -> bool {
        let Some(compactor) = self.compactor.as_ref() else {
            return false;
        };
        if compactor.busy().is_some() {
            // An inline compaction of the document out makes its snapshot stale.
            return !over_hard_limit;
        }
        let Ok(slot) = self.slot(id) else {
            return false;
        };
        let mark = match self.storage.increment_mark(&id.to_string()) {
            Ok(mark) => mark,
            Err(e) => {
                tracing::warn!(doc = %id, error = %e, "reading the increment mark failed");
                return false;
            }
        };
        let doc = &self.docs[slot];
        let request = Request {
            id,
            doc: doc.am.clone(),
            cover: Cover {
                mark,
                increments: doc.increments,
                increment_bytes: doc.increment_bytes,
                generation: doc.compactions,
            },
        };
        let Some(compactor) = self.compactor.as_mut() else {
            return false;
        };
        match compactor.submit(request) {
            Ok(submitted) => submitted || !over_hard_limit,
            Err(Gone) => {
                self.compactor_gone();
                false
            }
        }
    }

    /// The worker died (it could not save, or panicked): compact inline from now on.
    fn compactor_gone(&mut self) {
        tracing::warn!("the compaction thread is gone; compacting inline");
        self.compactor = None;
    }

    /// Installs the background compactor's snapshot, if one is ready.
    fn install_compaction(&mut self) {
        let Some(compactor) = self.compactor.as_mut() else {
            return;
        };
        match compactor.poll() {
            Ok(Some(saved)) => {
                self.install(saved);
            }
            Ok(None) => {}
            Err(Gone) => self.compactor_gone(),
        }
    }

    /// Waits up to `limit` for the background compaction in progress and installs it.
    /// Answers whether a snapshot was installed.
    #[cfg(test)]
    fn finish_background_compaction(&mut self, limit: std::time::Duration) -> bool {
        let Some(compactor) = self.compactor.as_mut() else {
            return false;
        };
        match compactor.wait(limit) {
            Ok(Some(saved)) => self.install(saved),
            Ok(None) => false,
            Err(Gone) => {
                self.compactor_gone();
                false
            }
        }
    }

    /// Writes a background snapshot, dropping the increments it covers, unless an inline
    /// compaction made it stale. Answers whether it was written.
    fn install(&mut self, saved: Saved) -> bool {
        let Ok(slot) = self.slot(saved.id) else {
            return false;
        };
        let cover = saved.cover;
        if self.docs[slot].compactions != cover.generation {
            return false;
        }
        let name = saved.id.to_string();
        if let Err(e) = self
            .storage
            .compact_through(&name, &saved.snapshot, cover.mark)
        {
            tracing::warn!(doc = %name, error = %e, "writing a background snapshot failed");
            return false;
        }
        let doc = &mut self.docs[slot];
        doc.increments = doc.increments.saturating_sub(cover.increments);
        doc.increment_bytes = doc.increment_bytes.saturating_sub(cover.increment_bytes);
        doc.compactions += 1;
        true
    }

    /// Compact every document.
    pub fn compact_all(&mut self) -> Result<(), MetaError> {
        for id in self.docs() {
            self.compact(id)?;
        }
        Ok(())
    }

    /// Observe a client's causal context (if any), then tick: the timestamp for a new commit.
    ///
    /// A context too far ahead of our clock (the client last wrote through a controller whose
    /// clock is wrong) is not merged into the clock, but this one write still gets a later
    /// timestamp than the context, so a write made after another's acknowledgement wins; the
    /// write is never refused for it.
    pub(crate) fn next_timestamp(
        &mut self,
        wall_ms: u64,
        after: Option<Timestamp>,
    ) -> Result<Timestamp, MetaError> {
        let mut floor = None;
        if let Some(after) = after
            && self.clock.observe(after, wall_ms).is_err()
        {
            tracing::warn!(%after, "client context from a clock far ahead; not merged");
            floor = Some(after);
        }
        let t = self.clock.tick(wall_ms);
        Ok(match floor {
            Some(f) if f >= t => Timestamp(f.0 + 1),
            _ => t,
        })
    }

    /// Pulls the clock back to `wall_ms` when it runs more than `slack_ms` ahead of it: after
    /// this controller learned its wall clock was wrong (see `crate::skew`), its next writes
    /// carry honest timestamps instead of winning every concurrent conflict until real time
    /// catches up. Causality does not depend on it: versions of one file are ordered by their
    /// version vectors. Answers whether it moved the clock.
    pub fn rebase_clock(&mut self, wall_ms: u64, slack_ms: u64) -> bool {
        let last = self.clock.high_water();
        if last.wall_ms() <= wall_ms.saturating_add(slack_ms) {
            return false;
        }
        tracing::warn!(from = %last, to = wall_ms, "clock rebased to the cluster's time");
        self.clock.rebase(Timestamp::from_wall_ms(wall_ms));
        true
    }

    /// Commit `f` on `id` at a fresh timestamp and persist it.
    pub(crate) fn commit<R>(
        &mut self,
        id: DocId,
        time: Timestamp,
        f: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
            &crate::document::MapIds<'_>,
        ) -> Result<R, automerge::AutomergeError>,
    ) -> Result<(R, Commit), MetaError> {
        let r = self.doc_mut(id)?.transact(time.0, f)?;
        let commit = self.persist(id)?.ok_or_else(|| MetaError::Internal {
            doc: id.to_string(),
            reason: "a commit produced no change".into(),
        })?;
        Ok((r, commit))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::files::NewVersion;
    use crate::storage::RocksStorage;

    const T0: u64 = 1_700_000_000_000;
    const LIMIT: usize = 10;

    fn config() -> Config {
        let mut c = Config::new(NodeId::new("node-c").unwrap());
        c.shards = 1;
        c.limits.compact_after_increments = LIMIT;
        c
    }

    fn add(s: &mut MetaStore, i: u64) {
        let v = NewVersion {
            size: 1,
            blake3: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            chunks: vec![(*blake3::hash(&i.to_be_bytes()).as_bytes(), 1)],
            tags: vec!["t".into()],
        };
        s.add_version("alice", &format!("f{i}"), v, T0 + i, None)
            .unwrap();
    }

    /// Fills the one file document until it is due, with the snapshot of the first `LIMIT`
    /// files out at the worker; then writes `more` files while the worker's result is held
    /// back (no compaction at all meanwhile).
    fn snapshot_out_then_write(dir: &std::path::Path, more: u64) -> (MetaStore, Compactor) {
        let mut s = MetaStore::open(Box::new(RocksStorage::open(dir).unwrap()), config()).unwrap();
        s.compact_in_background();
        for i in 0..LIMIT as u64 {
            add(&mut s, i);
        }
        let compactor = s.compactor.take().unwrap();
        assert_eq!(
            compactor.busy(),
            Some(DocId::Files(0)),
            "the due document went out"
        );
        s.config.limits.compact_after_increments = usize::MAX;
        for i in LIMIT as u64..LIMIT as u64 + more {
            add(&mut s, i);
        }
        s.config.limits.compact_after_increments = LIMIT;
        (s, compactor)
    }

    fn reopened_files(s: MetaStore) -> (usize, usize) {
        let mut storage = s.into_storage();
        let increments = storage.load("files/0").unwrap().increments.len();
        let s = MetaStore::open(storage, config()).unwrap();
        (s.file_count().unwrap(), increments)
    }

    #[test]
    fn a_background_snapshot_keeps_the_increments_written_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, compactor) = snapshot_out_then_write(dir.path(), 5);
        s.compactor = Some(compactor);
        assert!(s.finish_background_compaction(Duration::from_secs(30)));
        let (files, increments) = reopened_files(s);
        assert_eq!(files, LIMIT + 5, "every file survives the reopen");
        assert_eq!(
            increments, 5,
            "only the increments the snapshot covers were dropped"
        );
    }

    #[test]
    fn a_background_snapshot_older_than_an_inline_compaction_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, compactor) = snapshot_out_then_write(dir.path(), 5);
        s.compact_all().unwrap();
        add(&mut s, 100);
        s.compactor = Some(compactor);
        assert!(!s.finish_background_compaction(Duration::from_secs(30)));
        let (files, increments) = reopened_files(s);
        assert_eq!(files, LIMIT + 6, "the stale snapshot lost nothing");
        assert_eq!(increments, 1);
    }

    #[test]
    fn background_compaction_under_steady_writes_loses_nothing_and_bounds_increments() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            MetaStore::open(Box::new(RocksStorage::open(dir.path()).unwrap()), config()).unwrap();
        s.compact_in_background();
        let files = 50 * LIMIT as u64;
        for i in 0..files {
            add(&mut s, i);
        }
        s.finish_background_compaction(Duration::from_secs(30));
        assert!(s.docs[1].compactions > 0, "the document was compacted");
        let (found, increments) = reopened_files(s);
        assert_eq!(found, files as usize);
        assert!(
            increments < LIMIT * INLINE_COMPACTION_FACTOR,
            "{increments} increments left"
        );
    }
}
