//! What the disk sees: chunk bytes stored in batches as large as uploads and repair send them
//! reach the disk about once (no WAL copy, no rewrite by compactions), measured with the
//! kernel's count of bytes this process wrote (`/proc/self/io`). One test per binary, so no
//! other test's writes are counted.

use bytes::Bytes;
use redcloud_chunk::store::WRITE_ONCE_MIN;
use redcloud_chunk::store::conformance::test_chunk;
use redcloud_chunk::{ChunkId, ChunkStore, RocksOptions, RocksStore};

/// Bytes this process has caused to be written to storage so far.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("reading /proc/self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .expect("write_bytes in /proc/self/io")
        .trim()
        .parse()
        .unwrap()
}

const CHUNK: usize = 1 << 20;
/// Chunks per `put_many`: 8 MiB, as a full WriteChunks call or ReplicateChunks group.
const BATCH: usize = 8;
const TOTAL: usize = 96;
const _: () = assert!((BATCH * CHUNK) as u64 >= WRITE_ONCE_MIN);

#[test]
fn batches_of_large_chunks_reach_the_disk_once() {
    let chunks: Vec<(ChunkId, Bytes)> = (0..TOTAL as u64)
        .map(|i| {
            let bytes = test_chunk(40_000 + i, CHUNK);
            (ChunkId::of(&bytes), Bytes::from(bytes))
        })
        .collect();
    // Under the target directory: on disk, where `/tmp` may be a tmpfs that counts nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
    let before = written();
    for batch in chunks.chunks(BATCH) {
        store.put_many(batch).unwrap();
    }
    drop(store);
    let ratio = (written() - before) as f64 / (TOTAL * CHUNK) as f64;
    eprintln!("{ratio:.2}x of the stored bytes written to disk");
    // Below 0.9 the filesystem does not count writes, and the test would prove nothing.
    assert!(
        ratio >= 0.9,
        "{ratio:.2}x: this filesystem does not report writes"
    );
    // Through the WAL every byte is written twice; a blob GC that rewrites live blobs at
    // compactions adds more.
    assert!(
        ratio < 1.3,
        "{ratio:.2}x of the stored bytes written to disk"
    );
    let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
    for (id, bytes) in &chunks {
        assert_eq!(&store.get(id).unwrap(), bytes);
    }
}
