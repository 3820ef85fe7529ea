//! Power loss, not SIGKILL: the RocksDB chunk store on lazyfs (a FUSE filesystem that drops
//! every write not fsynced when the power is cut). Every chunk whose `put` returned is there
//! after the cut and reads back byte-identical; the store opens cleanly. Needs root and
//! /dev/fuse (REDCLOUD_FUSE_REQUIRED=1, as in CI, makes a skip a failure).

mod common;

use redcloud_chunk::store::WRITE_ONCE_MIN;
use redcloud_chunk::{ChunkId, ChunkStore, RocksOptions, RocksStore};

#[test]
fn every_acknowledged_chunk_survives_a_power_cut() {
    if !lazyfs::usable_for("chunk power loss") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mount = lazyfs::Mount::new(dir.path()).expect("mount lazyfs");
    let mut acked: Vec<(ChunkId, bytes::Bytes)> = Vec::new();
    // Three power cuts, each after a different amount of work, with small and large chunks
    // (large ones go to blob files), lone puts (through the WAL) and a batch big enough to
    // be written once (no WAL, a flush before its info is written).
    for (round, n) in [(0u64, 40usize), (1, 7), (2, 25)] {
        let path = mount.path().join("store");
        let store = RocksStore::open(&path, RocksOptions::default()).expect("open after the cut");
        for (id, data) in &acked {
            let got = store.get(id).unwrap_or_else(|e| {
                panic!("round {round}: acknowledged chunk {id} lost in the power cut: {e}")
            });
            assert_eq!(&got[..], &data[..], "round {round}: chunk {id} changed");
        }
        for i in 0..n {
            let seed = round * 1000 + i as u64;
            let len = if i % 3 == 0 { 300_000 } else { 3_000 + i * 7 };
            let (id, data) = common::chunk(seed, len);
            store.put(&id, &data).expect("put");
            acked.push((id, data));
        }
        let batch: Vec<_> = (0..6)
            .map(|i| common::chunk(round * 1000 + 500 + i, 1 << 20))
            .collect();
        assert!(batch.len() as u64 * (1 << 20) >= WRITE_ONCE_MIN);
        store.put_many(&batch).expect("put_many");
        acked.extend(batch);
        let survived = mount.power_cut();
        // The store's background work fails from here on (the disk is gone); it must not
        // panic on the way down.
        drop(store);
        mount = mount.remount(survived).expect("remount");
    }
    let store = RocksStore::open(&mount.path().join("store"), RocksOptions::default()).unwrap();
    for (id, data) in &acked {
        assert_eq!(&store.get(id).expect("acknowledged chunk")[..], &data[..]);
    }
}
