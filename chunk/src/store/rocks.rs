//! The RocksDB chunk store: the one chunkservers run.
//!
//! Three column families: `chunks` maps id -> bytes and uses BlobDB, so chunk bytes land in
//! blob files instead of being rewritten by every compaction; `info` maps id -> [`ChunkInfo`]
//! (24 bytes) and is what `contains`, `list` and the startup scan read; `pending` names the
//! chunks of a write-once batch (below) that are not finished yet.
//!
//! A chunk exists for every reader once its `info` record does, and that record is only ever
//! written, with a synced WAL, after the chunk's bytes are durable. The bytes get there one of
//! two ways:
//!
//! - **Through the WAL** (a lone put, or a batch with little blob-sized data): the bytes and
//!   the info go in one synced `WriteBatch`, and the bytes are written a second time, into a
//!   blob file, when the memtable is flushed. One fsync per write group, two writes per byte.
//! - **Written once** (a batch with at least [`WRITE_ONCE_MIN`] bytes of blob-sized chunks,
//!   as repair's ReplicateChunks and the client's WriteChunks send): the ids go into
//!   `pending` (synced), the bytes into the memtable without the WAL, a flush of `chunks`
//!   writes them once into a blob file and makes them durable, and then one synced batch
//!   writes their info and clears `pending`. A crash in between leaves bytes with a `pending`
//!   record and no info; the sweep at open deletes them.
//!
//! Why not every write: a flush syncs a blob file, an SST, the MANIFEST and the directory, about
//! four syncs where the WAL needs one. Built for every put on December 7, a lone writer of
//! 1 MiB chunks paid them per chunk and ran at 62-72 MiB/s against 138-191 MiB/s through the
//! WAL. From a few MiB per flush on, the saved second write is worth more than the syncs.
//!
//! Blob files are not rewritten while their chunks live. RocksDB's blob GC is off between
//! reclaim passes: switched on, every compaction (one every few flushes, and with values in
//! blob files the one SST level spans every key) rewrites the live blobs of the oldest quarter
//! of the blob files, garbage or not. Measured on December 7 with 1 MiB chunks, that moved
//! 0.3 GiB for 1 GiB stored and 3.4 GiB for 3 GiB, growing with the store; write-once
//! batches, with their many small flushes, moved 3.1 GiB for 1 GiB. A blob file whose chunks
//! are all deleted is dropped by compaction on its own; the space of a file only partly
//! deleted comes back in a reclaim pass ([`ChunkStore::reclaim_space`], run by the
//! chunkserver's reclaim worker): once garbage reaches 256 MiB (`RECLAIM_MIN_GARBAGE`) and a
//! quarter of the live blob bytes, one full compaction with blob GC on rewrites the live
//! blobs and drops the old files, so a byte given back costs at most four written. The old
//! files go only after the new ones are written, so a pass waits until the filesystem has
//! room for the live blob bytes again plus 256 MiB: it never fills the disk to free it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor, CompactOptions, DB,
    DBCompressionType, Direction, ErrorKind, FlushOptions, IteratorMode, Options, WriteBatch,
    WriteOptions,
};

use super::disk;
use super::record::{decode_info, encode_info};
use super::stripes::Stripes;
use super::{
    ChunkInfo, ChunkStore, Deletion, PutOutcome, StoreError, StoreStats, is_young, now_ms,
    toggle_digest, verify,
};
use crate::id::ChunkId;

const CHUNKS_CF: &str = "chunks";
const INFO_CF: &str = "info";
const PENDING_CF: &str = "pending";
/// Values from this size up go to blob files; smaller chunks stay inline in the SST files.
const MIN_BLOB_SIZE: u64 = 64 << 10;
/// Large enough to hold many 1 MiB chunks, small enough that a file whose chunks are all
/// deleted, which compaction drops without a reclaim pass, comes along often.
const BLOB_FILE_SIZE: u64 = 256 << 20;
const WRITE_BUFFER_SIZE: usize = 64 << 20;
/// The WAL holds chunk bytes until the memtable is flushed; this forces a flush past it.
const MAX_TOTAL_WAL_SIZE: u64 = 512 << 20;
/// Blob-sized bytes in one write from which they skip the WAL and are written once (see the
/// module docs): enough that one flush's syncs cost less than writing them twice.
pub const WRITE_ONCE_MIN: u64 = 4 << 20;
/// Garbage (bytes of deleted chunks left in blob files) below which no reclaim pass runs.
const RECLAIM_MIN_GARBAGE: u64 = 256 << 20;
/// A reclaim pass also waits until garbage is at least 1/this of the live blob bytes: a pass
/// rewrites every live blob, so each byte given back costs at most this many written.
const RECLAIM_LIVE_PER_GARBAGE: u64 = 4;
/// Free space a reclaim pass leaves on top of the live blob bytes it rewrites before it drops
/// the old files: a pass that could fill the disk does not start.
const RECLAIM_HEADROOM: u64 = 256 << 20;

/// What a reclaim check decided.
#[derive(Debug, PartialEq, Eq)]
enum ReclaimDue {
    /// Too little garbage to be worth rewriting the live blobs.
    NotYet,
    /// Worth it, but the filesystem could not hold a second copy of the live blobs.
    NoRoom,
    /// Run a pass.
    Now,
}

/// Whether a reclaim pass should run, from the garbage and live bytes in blob files and the
/// free space of the filesystem.
fn reclaim_due(garbage: u64, live: u64, available: u64) -> ReclaimDue {
    if garbage < RECLAIM_MIN_GARBAGE || garbage.saturating_mul(RECLAIM_LIVE_PER_GARBAGE) < live {
        ReclaimDue::NotYet
    } else if available < live.saturating_add(RECLAIM_HEADROOM) {
        ReclaimDue::NoRoom
    } else {
        ReclaimDue::Now
    }
}

/// How to open a [`RocksStore`].
#[derive(Debug, Clone, Default)]
pub struct RocksOptions {
    /// Most chunk bytes to accept. `None`: the bytes already stored plus the free space of the
    /// filesystem at open time.
    pub capacity: Option<u64>,
}

/// Chunks in RocksDB (see the module docs for the layout).
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    capacity: u64,
    /// Serialise check-then-write per id so concurrent puts and deletes of one chunk keep the
    /// counters exact, while different chunks still write (and group-commit) in parallel.
    stripes: Stripes,
    chunk_count: AtomicU64,
    /// Includes bytes reserved by puts in flight, so two puts cannot both take the last space.
    used_bytes: AtomicU64,
    /// Bytes of the stored chunks that live in blob files (of `used_bytes`, those of chunks
    /// of at least [`MIN_BLOB_SIZE`]): what the blob files would hold without garbage.
    blob_bytes: AtomicU64,
    digest: Mutex<[u8; 32]>,
    /// Held by the one reclaim pass that may run at a time.
    reclaiming: Mutex<()>,
}

impl RocksStore {
    /// Opens (creating if needed) the store at `path` and rebuilds its totals from `info`.
    pub fn open(path: &Path, options: RocksOptions) -> Result<Self, StoreError> {
        let open_error = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Io(format!("{what} chunk store at {}: {e}", path.display()))
        };
        redcloud_proto::local::create_private_dir_all(path)
            .map_err(|e| open_error("creating", &e))?;

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_total_wal_size(MAX_TOTAL_WAL_SIZE);
        db_options.set_keep_log_file_num(4);
        db_options.set_compression_type(DBCompressionType::None);

        let mut chunk_options = Options::default();
        chunk_options.set_compression_type(DBCompressionType::None);
        chunk_options.set_write_buffer_size(WRITE_BUFFER_SIZE);
        chunk_options.set_enable_blob_files(true);
        chunk_options.set_min_blob_size(MIN_BLOB_SIZE);
        chunk_options.set_blob_file_size(BLOB_FILE_SIZE);
        chunk_options.set_blob_compression_type(DBCompressionType::None);
        // Off between reclaim passes: on, every compaction rewrites the live blobs of the
        // oldest blob files whether they hold garbage or not (see `reclaim_space`).
        chunk_options.set_enable_blob_gc(false);

        let mut info_options = Options::default();
        info_options.set_compression_type(DBCompressionType::None);

        let families = [
            ColumnFamilyDescriptor::new(CHUNKS_CF, chunk_options),
            ColumnFamilyDescriptor::new(INFO_CF, info_options),
            ColumnFamilyDescriptor::new(PENDING_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_options, path, families)
            .map_err(|e| open_error("opening", &e))?;

        let mut store = Self {
            db,
            path: path.to_owned(),
            capacity: 0,
            stripes: Stripes::default(),
            chunk_count: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            blob_bytes: AtomicU64::new(0),
            digest: Mutex::new([0; 32]),
            reclaiming: Mutex::new(()),
        };
        store
            .sweep_unfinished()
            .map_err(|e| open_error("sweeping", &e))?;
        store
            .rebuild_totals()
            .map_err(|e| open_error("scanning", &e))?;
        let used = store.used_bytes.load(Ordering::Relaxed);
        store.capacity = match options.capacity {
            Some(capacity) => capacity,
            None => used.saturating_add(
                disk::available_bytes(path).map_err(|e| open_error("measuring", &e))?,
            ),
        };
        Ok(store)
    }

    /// The directory holding the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the bytes of write-once chunks that a crash left without their info record,
    /// and clears `pending`. A chunk that has its info record is never touched: a put finishes
    /// by writing the info and clearing `pending` in one batch, so the two cannot both be
    /// there, and if they somehow were, keeping the bytes is the safe answer.
    fn sweep_unfinished(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut swept = 0usize;
        for item in self.db.iterator_cf(self.pending_cf(), IteratorMode::Start) {
            let (key, _) = item.map_err(rocks_error)?;
            let id = ChunkId::from_slice(&key).map_err(|e| StoreError::Io(e.to_string()))?;
            if self.read_info(&id)?.is_none() {
                batch.delete_cf(self.chunks_cf(), id);
                swept += 1;
            }
            batch.delete_cf(self.pending_cf(), id);
        }
        if batch.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            chunks = swept,
            path = %self.path.display(),
            "removing chunk bytes an interrupted write left without their info"
        );
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(rocks_error)
    }

    fn rebuild_totals(&mut self) -> Result<(), StoreError> {
        let (mut count, mut used, mut blob, mut digest) = (0u64, 0u64, 0u64, [0u8; 32]);
        for item in self.db.iterator_cf(self.info_cf(), IteratorMode::Start) {
            let (key, value) = item.map_err(rocks_error)?;
            let id = ChunkId::from_slice(&key).map_err(|e| StoreError::Io(e.to_string()))?;
            let size = decode_info(&id, &value)?.size;
            count += 1;
            used += size;
            blob += blob_share(size);
            toggle_digest(&mut digest, &id);
        }
        self.chunk_count = AtomicU64::new(count);
        self.used_bytes = AtomicU64::new(used);
        self.blob_bytes = AtomicU64::new(blob);
        self.digest = Mutex::new(digest);
        Ok(())
    }

    fn chunks_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(CHUNKS_CF)
            .expect("opened with the chunks family")
    }

    fn info_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(INFO_CF)
            .expect("opened with the info family")
    }

    fn pending_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(PENDING_CF)
            .expect("opened with the pending family")
    }

    fn lock(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        self.stripes.lock(id)
    }

    /// Durable writes: the call returns only after the WAL is synced to disk.
    fn synced() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    /// Stores `chunks` (already verified) while the caller holds the stripe locks of all
    /// their ids: the new chunks with their info, and the refreshed stored-at times of those
    /// already here. The new chunks' bytes go through the WAL or, for a batch with enough
    /// blob-sized bytes, are written once (see the module docs); either way the info records
    /// come last, in one synced `WriteBatch`. Synced writes of concurrent callers share
    /// RocksDB's group commit, so one fsync serves them all.
    fn write_locked(&self, chunks: &[(&ChunkId, &[u8])]) -> Result<Vec<PutOutcome>, StoreError> {
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(chunks.len());
        let mut batch = WriteBatch::default();
        let mut added: Vec<(&ChunkId, &[u8])> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(chunks.len());
        for &(id, bytes) in chunks {
            if !seen.insert(id) {
                // The same chunk twice in one call: stored (or touched) by its first entry.
                outcomes.push(PutOutcome::AlreadyPresent);
                continue;
            }
            if let Some(mut info) = self.read_info(id)? {
                // Only the 24-byte info record is rewritten; synced because GC's minimum age
                // relies on it to keep a chunk that was just uploaded again.
                info.stored_at_ms = now;
                batch.put_cf(self.info_cf(), id, encode_info(&info));
                outcomes.push(PutOutcome::AlreadyPresent);
                continue;
            }
            added.push((id, bytes));
            outcomes.push(PutOutcome::Stored);
        }
        let new_bytes: u64 = added.iter().map(|(_, b)| b.len() as u64).sum();
        let blobs: Vec<(&ChunkId, &[u8])> =
            added.iter().copied().filter(|(_, b)| is_blob(b)).collect();
        let blob_total: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let once = if blob_total >= WRITE_ONCE_MIN {
            blobs
        } else {
            Vec::new()
        };
        self.reserve(new_bytes)?;
        if let Err(e) = self.write_bytes_once(&once) {
            // No info record was written, so nothing of this write is visible: its bytes and
            // pending records can go.
            self.forget_unfinished(&once);
            return Err(self.failed_write(new_bytes, e));
        }
        for &(id, bytes) in &added {
            if once.is_empty() || !is_blob(bytes) {
                batch.put_cf(self.chunks_cf(), id, bytes);
            } else {
                batch.delete_cf(self.pending_cf(), id);
            }
            let info = ChunkInfo {
                size: bytes.len() as u64,
                stored_at_ms: now,
                last_verified_ms: now,
            };
            batch.put_cf(self.info_cf(), id, encode_info(&info));
        }
        if let Err(e) = self.db.write_opt(batch, &Self::synced()) {
            // Whether the info records reached the disk is unknown, so the bytes written once
            // stay with their pending records: the sweep at the next open keeps those whose
            // info is there and removes the rest.
            return Err(self.failed_write(new_bytes, rocks_error(e)));
        }
        self.chunk_count
            .fetch_add(added.len() as u64, Ordering::SeqCst);
        self.blob_bytes.fetch_add(blob_total, Ordering::SeqCst);
        let mut digest = self.digest.lock();
        for (id, _) in added {
            toggle_digest(&mut digest, id);
        }
        Ok(outcomes)
    }

    /// Makes the bytes of `chunks` durable without the WAL: their ids into `pending` (synced),
    /// the bytes into the memtable, and a flush of `chunks` that writes them once into a blob
    /// file. Their info is not written here, so no reader sees them yet.
    fn write_bytes_once(&self, chunks: &[(&ChunkId, &[u8])]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut intents = WriteBatch::default();
        let mut bytes = WriteBatch::default();
        for &(id, data) in chunks {
            intents.put_cf(self.pending_cf(), id, []);
            bytes.put_cf(self.chunks_cf(), id, data);
        }
        self.db
            .write_opt(intents, &Self::synced())
            .map_err(rocks_error)?;
        let mut no_wal = WriteOptions::default();
        no_wal.disable_wal(true);
        self.db.write_opt(bytes, &no_wal).map_err(rocks_error)?;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cf_opt(self.chunks_cf(), &flush)
            .map_err(rocks_error)
    }

    /// After `write_bytes_once` failed: removes what it left (bytes without info, and their
    /// `pending` records). If this fails too, the sweep at the next open does it.
    fn forget_unfinished(&self, chunks: &[(&ChunkId, &[u8])]) {
        if chunks.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        for &(id, _) in chunks {
            batch.delete_cf(self.chunks_cf(), id);
            batch.delete_cf(self.pending_cf(), id);
        }
        if let Err(e) = self.db.write_opt(batch, &Self::synced()) {
            tracing::warn!(
                error = %e,
                path = %self.path.display(),
                "could not remove the bytes of a failed write; the next open will"
            );
        }
    }

    /// Bytes of blob files that no stored chunk uses: deleted chunks, and bytes of writes in
    /// flight.
    fn garbage_bytes(&self) -> Result<u64, StoreError> {
        let files = self.blob_file_bytes()?;
        Ok(files.saturating_sub(self.blob_bytes.load(Ordering::SeqCst)))
    }

    fn blob_file_bytes(&self) -> Result<u64, StoreError> {
        let files = self
            .db
            .property_int_value_cf(self.chunks_cf(), "rocksdb.live-blob-file-size")
            .map_err(rocks_error)?;
        Ok(files.unwrap_or(0))
    }

    /// Gives back the space of deleted chunks: with RocksDB's blob GC switched on for all
    /// blob files, one full compaction of `chunks` rewrites the live blobs into new files
    /// and drops the old ones. Answers the bytes of blob files given back. Only one pass runs
    /// at a time; puts, gets and deletes go on meanwhile.
    fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _one = self.reclaiming.lock();
        let before = self.blob_file_bytes()?;
        // Deletes still in the memtable take part in the compaction only once flushed.
        self.db.flush_cf(self.chunks_cf()).map_err(rocks_error)?;
        let cf = self.chunks_cf();
        self.db
            .set_options_cf(
                cf,
                &[
                    ("enable_blob_garbage_collection", "true"),
                    ("blob_garbage_collection_age_cutoff", "1.0"),
                ],
            )
            .map_err(rocks_error)?;
        let mut compact = CompactOptions::default();
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &compact);
        self.db
            .set_options_cf(cf, &[("enable_blob_garbage_collection", "false")])
            .map_err(rocks_error)?;
        Ok(before.saturating_sub(self.blob_file_bytes()?))
    }

    /// Gives back the `reserved` capacity of a write that failed with `e`, and names the
    /// space the write needed when the disk was full.
    fn failed_write(&self, reserved: u64, e: StoreError) -> StoreError {
        self.used_bytes.fetch_sub(reserved, Ordering::SeqCst);
        match e {
            StoreError::DiskFull { .. } => StoreError::DiskFull {
                needed: reserved,
                available: 0,
            },
            other => other,
        }
    }

    /// Takes `size` bytes of capacity, or refuses with `DiskFull`.
    fn reserve(&self, size: u64) -> Result<(), StoreError> {
        self.used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(size)
                    .filter(|&total| total <= self.capacity)
            })
            .map(drop)
            .map_err(|used| StoreError::DiskFull {
                needed: size,
                available: self.capacity.saturating_sub(used),
            })
    }

    fn read_info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.info_cf(), id)
            .map_err(rocks_error)?
        {
            Some(value) => decode_info(id, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes chunk and info, unless younger than `min_age_ms`, while the caller holds the
    /// id's stripe lock.
    fn delete_locked(
        &self,
        id: &ChunkId,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Deletion, StoreError> {
        let Some(info) = self.read_info(id)? else {
            return Ok(Deletion::Absent);
        };
        if is_young(info.stored_at_ms, min_age_ms, now_ms) {
            return Ok(Deletion::KeptYoung);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.chunks_cf(), id);
        batch.delete_cf(self.info_cf(), id);
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(rocks_error)?;
        self.chunk_count.fetch_sub(1, Ordering::SeqCst);
        self.used_bytes.fetch_sub(info.size, Ordering::SeqCst);
        self.blob_bytes
            .fetch_sub(blob_share(info.size), Ordering::SeqCst);
        toggle_digest(&mut self.digest.lock(), id);
        Ok(Deletion::Deleted)
    }

    /// Reads the stored value; a RocksDB checksum failure counts as corruption.
    fn read_value(&self, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        match self.db.get_pinned_cf(self.chunks_cf(), id) {
            Ok(value) => Ok(value.map(|v| Bytes::copy_from_slice(&v))),
            Err(e) if e.kind() == ErrorKind::Corruption => Err(StoreError::Corrupt(*id)),
            Err(e) => Err(rocks_error(e)),
        }
    }

    /// Drops a copy found corrupt, re-checking under the lock so that a good copy written in
    /// the meantime survives.
    fn drop_corrupt(&self, id: &ChunkId) -> Result<(), StoreError> {
        let _guard = self.lock(id);
        let still_bad = match self.read_value(id) {
            Ok(Some(bytes)) => ChunkId::of(&bytes) != *id,
            Ok(None) => false,
            Err(StoreError::Corrupt(_)) => true,
            Err(e) => return Err(e),
        };
        if still_bad {
            tracing::warn!(chunk = %id, path = %self.path.display(), "dropping corrupt chunk");
            self.delete_locked(id, 0, 0)?;
        }
        Ok(())
    }
}

impl ChunkStore for RocksStore {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        verify(id, bytes)?;
        let _guard = self.lock(id);
        let outcomes = self.write_locked(&[(id, bytes)])?;
        Ok(outcomes[0])
    }

    fn put_many(&self, chunks: &[(ChunkId, Bytes)]) -> Result<Vec<PutOutcome>, StoreError> {
        for (id, bytes) in chunks {
            verify(id, bytes)?;
        }
        let _guards = self.stripes.lock_all(chunks.iter().map(|(id, _)| id));
        let chunks: Vec<(&ChunkId, &[u8])> = chunks.iter().map(|(id, b)| (id, &b[..])).collect();
        self.write_locked(&chunks)
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        match self.read_value(id) {
            Ok(Some(bytes)) if ChunkId::of(&bytes) == *id => Ok(bytes),
            Ok(Some(_)) | Err(StoreError::Corrupt(_)) => {
                self.drop_corrupt(id)?;
                Err(StoreError::Corrupt(*id))
            }
            Ok(None) => Err(StoreError::NotFound(*id)),
            Err(e) => Err(e),
        }
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.info_cf(), id)
            .map_err(rocks_error)?
            .is_some())
    }

    fn contains_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.db
            .batched_multi_get_cf(self.info_cf(), ids, false)
            .into_iter()
            .map(|found| found.map(|v| v.is_some()).map_err(rocks_error))
            .collect()
    }

    fn delete_if_older(
        &self,
        id: &ChunkId,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Deletion, StoreError> {
        let _guard = self.lock(id);
        self.delete_locked(id, min_age_ms, now_ms)
    }

    fn touch_many(&self, ids: &[ChunkId], now_ms: u64) -> Result<Vec<bool>, StoreError> {
        // Every stripe the ids fall in is held (in ascending order, so two callers cannot
        // deadlock) until the batch is durable: a concurrent delete cannot slip between the
        // read and the write, which would leave an info record without its chunk.
        let _guards = self.stripes.lock_all(ids.iter());
        let mut present = Vec::with_capacity(ids.len());
        let mut batch = WriteBatch::default();
        for id in ids {
            let Some(mut info) = self.read_info(id)? else {
                present.push(false);
                continue;
            };
            if info.stored_at_ms < now_ms {
                info.stored_at_ms = now_ms;
                batch.put_cf(self.info_cf(), id, encode_info(&info));
            }
            present.push(true);
        }
        if !batch.is_empty() {
            // One synced write for the whole batch, durable before the answer. A synced write
            // (unlike `flush_wal(true)`, which every caller runs on its own) joins RocksDB's
            // write group, so the touches of concurrent commits share one fsync.
            self.db
                .write_opt(batch, &Self::synced())
                .map_err(rocks_error)?;
        }
        Ok(present)
    }

    fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64)>, StoreError> {
        let mode = match &after {
            Some(after) => IteratorMode::From(after.as_bytes(), Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut page = Vec::with_capacity(limit.min(4096));
        for item in self.db.iterator_cf(self.info_cf(), mode) {
            if page.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(rocks_error)?;
            let id = ChunkId::from_slice(&key).map_err(|e| StoreError::Io(e.to_string()))?;
            if Some(id) == after {
                continue;
            }
            page.push((id, decode_info(&id, &value)?.size));
        }
        Ok(page)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            chunk_count: self.chunk_count.load(Ordering::SeqCst),
            used_bytes: self.used_bytes.load(Ordering::SeqCst),
            capacity_bytes: self.capacity,
            inventory_digest: *self.digest.lock(),
        }
    }

    fn info(&self, id: &ChunkId) -> Result<Option<ChunkInfo>, StoreError> {
        self.read_info(id)
    }

    fn reclaim_space(&self) -> Result<u64, StoreError> {
        let garbage = self.garbage_bytes()?;
        let live = self.blob_bytes.load(Ordering::SeqCst);
        let available =
            disk::available_bytes(&self.path).map_err(|e| StoreError::Io(e.to_string()))?;
        match reclaim_due(garbage, live, available) {
            ReclaimDue::NotYet => return Ok(0),
            ReclaimDue::NoRoom => {
                tracing::warn!(
                    garbage,
                    live,
                    available,
                    path = %self.path.display(),
                    "too little free space to rewrite the live chunks; the space of deleted \
                     chunks stays taken until there is more"
                );
                return Ok(0);
            }
            ReclaimDue::Now => {}
        }
        let freed = self.collect_garbage()?;
        tracing::info!(garbage, live, freed, path = %self.path.display(), "reclaimed the space of deleted chunks");
        Ok(freed)
    }

    fn mark_verified(&self, id: &ChunkId, now_ms: u64) -> Result<(), StoreError> {
        let _guard = self.lock(id);
        let Some(mut info) = self.read_info(id)? else {
            return Ok(());
        };
        info.last_verified_ms = now_ms;
        // Not synced: losing a verification time in a crash only means an earlier re-check.
        self.db
            .put_cf(self.info_cf(), id, encode_info(&info))
            .map_err(rocks_error)
    }

    fn corrupt_for_test(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let _guard = self.lock(id);
        let Some(bytes) = self.read_value(id)? else {
            return Ok(false);
        };
        let mut rotten = bytes.to_vec();
        match rotten.get_mut(bytes.len() / 2) {
            Some(byte) => *byte ^= 0x01,
            None => rotten.push(0),
        }
        self.db
            .put_cf_opt(self.chunks_cf(), id, rotten, &Self::synced())
            .map_err(rocks_error)?;
        Ok(true)
    }
}

/// Whether a chunk this size goes to a blob file.
fn is_blob(bytes: &[u8]) -> bool {
    blob_share(bytes.len() as u64) > 0
}

/// The bytes a chunk of `size` puts in blob files.
fn blob_share(size: u64) -> u64 {
    if size >= MIN_BLOB_SIZE { size } else { 0 }
}

fn rocks_error(e: rocksdb::Error) -> StoreError {
    let message = e.into_string();
    if disk::is_no_space(&message) {
        StoreError::DiskFull {
            needed: 0,
            available: 0,
        }
    } else {
        StoreError::Io(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn totals_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 << 10]).collect();
        let before = {
            let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            for c in &chunks {
                store.put(&ChunkId::of(c), c).unwrap();
            }
            store.delete(&ChunkId::of(&chunks[0])).unwrap();
            store.stats()
        };
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        let after = store.stats();
        assert_eq!(after.chunk_count, 4);
        assert_eq!(after.used_bytes, 4 * (100 << 10));
        assert_eq!(after.inventory_digest, before.inventory_digest);
        assert_eq!(store.get(&ChunkId::of(&chunks[3])).unwrap(), chunks[3]);
    }

    #[test]
    fn concurrent_batches_and_puts_all_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<(ChunkId, Bytes)> = (0..64u64)
            .map(|i| {
                let len = if i % 4 == 0 { 100 << 10 } else { 3_000 };
                let bytes = crate::store::conformance::test_chunk(100 + i, len);
                (ChunkId::of(&bytes), Bytes::from(bytes))
            })
            .collect();
        {
            let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            std::thread::scope(|scope| {
                for (n, part) in chunks.chunks(16).enumerate() {
                    let store = &store;
                    scope.spawn(move || {
                        if n % 2 == 0 {
                            store.put_many(part).unwrap();
                        } else {
                            for (id, bytes) in part {
                                store.put(id, bytes).unwrap();
                            }
                        }
                    });
                }
            });
        }
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(store.stats().chunk_count, 64);
        for (id, bytes) in &chunks {
            assert_eq!(&store.get(id).unwrap(), bytes);
        }
    }

    /// Bytes in the store directory's WAL files.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
            .map(|entry| entry.metadata().unwrap().len())
            .sum()
    }

    fn pending_is_empty(store: &RocksStore) -> bool {
        store
            .db
            .iterator_cf(store.pending_cf(), IteratorMode::Start)
            .next()
            .is_none()
    }

    fn large_chunks(seed: u64, n: u64) -> Vec<(ChunkId, Bytes)> {
        (0..n)
            .map(|i| {
                let bytes = crate::store::conformance::test_chunk(seed + i, 1 << 20);
                (ChunkId::of(&bytes), Bytes::from(bytes))
            })
            .collect()
    }

    #[test]
    fn a_large_batch_is_written_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = large_chunks(500, 8);
        let small = crate::store::conformance::test_chunk(9, 3_000);
        {
            let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            let mut batch = chunks.clone();
            batch.push((ChunkId::of(&small), Bytes::from(small.clone())));
            let outcomes = store.put_many(&batch).unwrap();
            assert!(outcomes.iter().all(|&o| o == PutOutcome::Stored));
            // The 8 MiB of chunk bytes went to a blob file only, not through the WAL.
            let wal = wal_bytes(dir.path());
            assert!(wal < 256 << 10, "{wal} bytes of WAL for 8 MiB written once");
            for (id, bytes) in &chunks {
                assert_eq!(&store.get(id).unwrap(), bytes);
            }
            assert!(pending_is_empty(&store));
        }
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(store.stats().chunk_count, 9);
        assert_eq!(store.stats().used_bytes, (8 << 20) + 3_000);
        for (id, bytes) in &chunks {
            assert_eq!(&store.get(id).unwrap(), bytes);
        }
        assert_eq!(store.get(&ChunkId::of(&small)).unwrap(), small);
        // Stored again, they are already here.
        let again = store.put_many(&chunks).unwrap();
        assert!(again.iter().all(|&o| o == PutOutcome::AlreadyPresent));
    }

    #[test]
    fn bytes_a_crash_left_without_info_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let kept = large_chunks(600, 1);
        let orphans = large_chunks(700, 5);
        {
            let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
            store.put_many(&kept).unwrap();
            // What a failed info write leaves when the info reached the disk after all: the
            // chunk with its info, and a pending record. The sweep must keep its bytes.
            store
                .db
                .put_cf_opt(store.pending_cf(), kept[0].0, [], &RocksStore::synced())
                .unwrap();
            // What a crash between the flush and the info batch leaves: durable bytes and
            // their pending records, no info.
            let unfinished: Vec<(&ChunkId, &[u8])> =
                orphans.iter().map(|(id, b)| (id, &b[..])).collect();
            store.write_bytes_once(&unfinished).unwrap();
            assert!(store.read_value(&orphans[0].0).unwrap().is_some());
        }
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        for (id, _) in &orphans {
            assert!(store.read_value(id).unwrap().is_none(), "{id} left behind");
            assert!(!store.contains(id).unwrap());
        }
        assert!(pending_is_empty(&store));
        assert_eq!(store.stats().chunk_count, 1);
        assert_eq!(store.get(&kept[0].0).unwrap(), kept[0].1);
        // The swept chunks can be stored again.
        assert!(
            store
                .put_many(&orphans)
                .unwrap()
                .iter()
                .all(|&o| o == PutOutcome::Stored)
        );
        assert_eq!(store.get(&orphans[4].0).unwrap(), orphans[4].1);
    }

    #[test]
    fn a_reclaim_pass_waits_for_garbage_worth_it_and_room_for_the_rewrite() {
        const MIB: u64 = 1 << 20;
        let plenty = u64::MAX;
        // Little garbage, or little beside the live bytes: not yet.
        assert_eq!(reclaim_due(0, 0, plenty), ReclaimDue::NotYet);
        assert_eq!(reclaim_due(255 * MIB, 0, plenty), ReclaimDue::NotYet);
        assert_eq!(
            reclaim_due(300 * MIB, 1_201 * MIB, plenty),
            ReclaimDue::NotYet
        );
        // Enough of both.
        assert_eq!(reclaim_due(256 * MIB, 1_024 * MIB, plenty), ReclaimDue::Now);
        // The rewrite needs the live bytes again plus headroom free.
        assert_eq!(
            reclaim_due(300 * MIB, 1_000 * MIB, 1_256 * MIB),
            ReclaimDue::Now
        );
        assert_eq!(
            reclaim_due(300 * MIB, 1_000 * MIB, 1_255 * MIB),
            ReclaimDue::NoRoom
        );
        assert_eq!(reclaim_due(300 * MIB, 0, 100 * MIB), ReclaimDue::NoRoom);
    }

    /// The names of the store's blob files.
    fn blob_files(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".blob"))
            .collect()
    }

    #[test]
    fn compactions_leave_the_blob_files_of_live_chunks_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        for batch in 0..8 {
            store
                .put_many(&large_chunks(1_000 + batch * 10, 4))
                .unwrap();
        }
        let written = blob_files(dir.path());
        assert!(written.len() >= 8, "{written:?}");
        // A full compaction, the most any compaction touches: nothing is garbage, so no live
        // blob may be rewritten (with blob GC always on, the oldest quarter of the files was).
        store
            .db
            .compact_range_cf(store.chunks_cf(), None::<&[u8]>, None::<&[u8]>);
        assert_eq!(blob_files(dir.path()), written);
        // Blob files add a few dozen bytes per chunk (key and record header) to its bytes.
        assert!(store.garbage_bytes().unwrap() < 64 << 10);
    }

    #[test]
    fn a_reclaim_pass_gives_back_the_space_of_deleted_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        let chunks = large_chunks(2_000, 12);
        store.put_many(&chunks[..6]).unwrap();
        store.put_many(&chunks[6..]).unwrap();
        // Three of every four, so both blob files keep live chunks (a file whose chunks are
        // all deleted is dropped by compaction without a pass).
        let (kept, deleted): (Vec<_>, Vec<_>) = (0..12).partition(|i| i % 4 == 3);
        for &i in &deleted {
            assert!(store.delete(&chunks[i].0).unwrap());
        }
        store
            .db
            .compact_range_cf(store.chunks_cf(), None::<&[u8]>, None::<&[u8]>);
        assert!(store.garbage_bytes().unwrap() >= 9 << 20);
        // Below RECLAIM_MIN_GARBAGE the worker's call leaves everything as it is.
        let files = blob_files(dir.path());
        assert_eq!(store.reclaim_space().unwrap(), 0);
        assert_eq!(blob_files(dir.path()), files);

        let freed = store.collect_garbage().unwrap();
        assert!(freed >= 8 << 20, "{freed} bytes given back");
        assert!(store.garbage_bytes().unwrap() < 1 << 20);
        for &i in &kept {
            assert_eq!(store.get(&chunks[i].0).unwrap(), chunks[i].1);
        }
        drop(store);
        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(store.stats().chunk_count, 3);
        assert!(store.garbage_bytes().unwrap() < 1 << 20);
        for &i in &kept {
            assert_eq!(store.get(&chunks[i].0).unwrap(), chunks[i].1);
        }
        // Rewriting the live blobs brings no deleted chunk back.
        for &i in &deleted {
            assert!(!store.contains(&chunks[i].0).unwrap());
            assert!(store.read_value(&chunks[i].0).unwrap().is_none());
        }
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = RocksStore::open(&file, RocksOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn a_second_open_of_a_live_store_fails_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        let err = RocksStore::open(dir.path(), RocksOptions::default())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
