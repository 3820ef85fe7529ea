//! The one conformance suite every [`ChunkStore`] must pass.
//!
//! Each case takes a fresh, empty store and checks a law from the trait's documentation.
//! Test code calls [`run_all`] with a function that opens fresh stores; the suite is public
//! (hidden from docs) so that other crates with their own stores can run it too.

use bytes::Bytes;

use super::{ChunkStore, Deletion, MAX_CHUNK_SIZE, PutOutcome, StoreError};
use crate::id::ChunkId;

/// The capacity, in bytes, of the store handed to [`capacity_refusal`].
pub const SMALL_CAPACITY: u64 = 1 << 20;

/// One law, checked on a fresh store.
pub type Case = fn(&dyn ChunkStore);

/// Every case that needs an unlimited store, by name.
pub const CASES: &[(&str, Case)] = &[
    ("put_get_round_trip", put_get_round_trip),
    ("hash_mismatch_stores_nothing", hash_mismatch_stores_nothing),
    ("re_put_is_a_no_op", re_put_is_a_no_op),
    ("put_many", put_many),
    ("ranges", ranges),
    ("contains_many", contains_many),
    ("delete", delete),
    ("delete_keeps_young_chunks", delete_keeps_young_chunks),
    ("touch_keeps_chunks_young", touch_keeps_chunks_young),
    ("touches_race_deletes_safely", touches_race_deletes_safely),
    ("list_pages_in_id_order", list_pages_in_id_order),
    ("digest_is_xor_of_ids", digest_is_xor_of_ids),
    ("oversize_refused", oversize_refused),
    ("corrupt_copy_is_dropped", corrupt_copy_is_dropped),
    ("mark_verified", mark_verified),
];

/// Runs every case. `open(capacity)` must return a fresh, empty store accepting at most
/// `capacity` bytes (`None`: as much as it likes).
pub fn run_all(open: &mut dyn FnMut(Option<u64>) -> Box<dyn ChunkStore>) {
    for (name, case) in CASES {
        eprintln!("conformance case: {name}");
        case(&*open(None));
    }
    eprintln!("conformance case: capacity_refusal");
    capacity_refusal(&*open(Some(SMALL_CAPACITY)));
}

/// Deterministic pseudo-random bytes: chunk number `seed` of length `len`.
pub fn test_chunk(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut bytes);
    bytes
}

fn put_new(store: &dyn ChunkStore, bytes: &[u8]) -> ChunkId {
    let id = ChunkId::of(bytes);
    assert_eq!(store.put(&id, bytes).unwrap(), PutOutcome::Stored);
    id
}

/// Bytes come back exactly, across the blob-file threshold and for the empty chunk.
pub fn put_get_round_trip(store: &dyn ChunkStore) {
    for (seed, len) in [
        (0, 0),
        (1, 1),
        (2, (64 << 10) - 1),
        (3, 64 << 10),
        (4, (1 << 20) + 3),
    ] {
        let bytes = test_chunk(seed, len);
        let id = put_new(store, &bytes);
        assert!(store.contains(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), bytes, "chunk of {len} bytes");
        let info = store.info(&id).unwrap().expect("info of a stored chunk");
        assert_eq!(info.size, len as u64);
        assert!(info.stored_at_ms > 0 && info.last_verified_ms >= info.stored_at_ms);
    }
    assert_eq!(store.stats().chunk_count, 5);
}

/// Bytes that do not hash to the claimed id are refused and leave no trace.
pub fn hash_mismatch_stores_nothing(store: &dyn ChunkStore) {
    let (claimed, sent) = (test_chunk(10, 1000), test_chunk(11, 1000));
    let id = ChunkId::of(&claimed);
    let err = store.put(&id, &sent).unwrap_err();
    assert_eq!(
        err,
        StoreError::HashMismatch {
            expected: id,
            actual: ChunkId::of(&sent)
        }
    );
    assert!(!store.contains(&id).unwrap());
    assert!(!store.contains(&ChunkId::of(&sent)).unwrap());
    assert_eq!(store.get(&id).unwrap_err(), StoreError::NotFound(id));
    assert_eq!(store.stats().chunk_count, 0);
    assert_eq!(store.stats().used_bytes, 0);
}

/// Writing a stored chunk again changes nothing but its write time.
pub fn re_put_is_a_no_op(store: &dyn ChunkStore) {
    let bytes = test_chunk(20, 5000);
    let id = put_new(store, &bytes);
    let (stats, info) = (store.stats(), store.info(&id).unwrap().unwrap());
    assert_eq!(store.put(&id, &bytes).unwrap(), PutOutcome::AlreadyPresent);
    assert_eq!(store.stats(), stats);
    assert_eq!(store.get(&id).unwrap(), bytes);
    let again = store.info(&id).unwrap().unwrap();
    assert_eq!(again.size, info.size);
    assert!(again.stored_at_ms >= info.stored_at_ms);
}

/// `put_many` answers each chunk as `put` would (a repeat within the call included), and
/// stores nothing of a call with one bad chunk.
pub fn put_many(store: &dyn ChunkStore) {
    let there = test_chunk(30, 2000);
    let there_id = put_new(store, &there);
    let chunks: Vec<(ChunkId, Bytes)> = [test_chunk(31, 3000), test_chunk(32, 100 << 10)]
        .into_iter()
        .chain([test_chunk(31, 3000), there.clone()])
        .map(|b| (ChunkId::of(&b), Bytes::from(b)))
        .collect();
    let outcomes = store.put_many(&chunks).unwrap();
    use PutOutcome::{AlreadyPresent, Stored};
    assert_eq!(outcomes, [Stored, Stored, AlreadyPresent, AlreadyPresent]);
    for (id, bytes) in &chunks {
        assert_eq!(store.get(id).unwrap(), bytes);
    }
    let stats = store.stats();
    assert_eq!(stats.chunk_count, 3);
    assert_eq!(stats.used_bytes, 2000 + 3000 + (100 << 10));
    assert!(store.contains(&there_id).unwrap());

    let good = test_chunk(33, 500);
    let (claimed, sent) = (test_chunk(34, 500), test_chunk(35, 500));
    let bad = [
        (ChunkId::of(&good), Bytes::from(good)),
        (ChunkId::of(&claimed), Bytes::from(sent.clone())),
    ];
    assert_eq!(
        store.put_many(&bad).unwrap_err(),
        StoreError::HashMismatch {
            expected: ChunkId::of(&claimed),
            actual: ChunkId::of(&sent)
        }
    );
    assert!(
        !store.contains(&bad[0].0).unwrap(),
        "a good chunk of a refused call was stored"
    );
    assert_eq!(store.stats(), stats);
}

/// Ranges return the right bytes; ranges outside the chunk are refused clearly.
pub fn ranges(store: &dyn ChunkStore) {
    let bytes = test_chunk(30, 200_000);
    let id = put_new(store, &bytes);
    assert_eq!(store.get_range(&id, 0..200_000).unwrap(), bytes);
    assert_eq!(
        store.get_range(&id, 1000..70_000).unwrap(),
        bytes[1000..70_000]
    );
    assert!(store.get_range(&id, 200_000..200_000).unwrap().is_empty());
    let expect = |start, end| StoreError::OutOfRange {
        start,
        end,
        size: 200_000,
    };
    assert_eq!(
        store.get_range(&id, 0..200_001).unwrap_err(),
        expect(0, 200_001)
    );
    assert_eq!(
        store.get_range(&id, 300_000..300_010).unwrap_err(),
        expect(300_000, 300_010)
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 10..5;
    assert_eq!(store.get_range(&id, reversed).unwrap_err(), expect(10, 5));
    let missing = ChunkId::of(b"missing");
    assert_eq!(
        store.get_range(&missing, 0..1).unwrap_err(),
        StoreError::NotFound(missing)
    );
}

/// `contains_many` answers each id in order, duplicates included.
pub fn contains_many(store: &dyn ChunkStore) {
    let a = put_new(store, &test_chunk(40, 100));
    let b = put_new(store, &test_chunk(41, 100));
    let absent = ChunkId::of(b"absent");
    assert_eq!(
        store.contains_many(&[absent, a, b, absent, a]).unwrap(),
        [false, true, true, false, true]
    );
    assert!(store.contains_many(&[]).unwrap().is_empty());
}

/// Delete removes the chunk and reports whether it existed; the chunk can be stored again.
pub fn delete(store: &dyn ChunkStore) {
    let bytes = test_chunk(50, 100_000);
    let id = put_new(store, &bytes);
    assert!(store.delete(&id).unwrap());
    assert!(!store.delete(&id).unwrap());
    assert_eq!(store.get(&id).unwrap_err(), StoreError::NotFound(id));
    assert_eq!(store.info(&id).unwrap(), None);
    let stats = store.stats();
    assert_eq!(
        (stats.chunk_count, stats.used_bytes, stats.inventory_digest),
        (0, 0, [0; 32])
    );
    assert_eq!(store.put(&id, &bytes).unwrap(), PutOutcome::Stored);
    assert_eq!(store.get(&id).unwrap(), bytes);
}

/// A minimum age keeps chunks written recently, counting from the latest (re-)write.
pub fn delete_keeps_young_chunks(store: &dyn ChunkStore) {
    let bytes = test_chunk(55, 1000);
    let id = put_new(store, &bytes);
    let written = store.info(&id).unwrap().unwrap().stored_at_ms;
    assert_eq!(
        store.delete_if_older(&id, 10_000, written + 9_999).unwrap(),
        Deletion::KeptYoung
    );
    assert!(store.contains(&id).unwrap());
    // A re-upload restarts the clock.
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(store.put(&id, &bytes).unwrap(), PutOutcome::AlreadyPresent);
    let rewritten = store.info(&id).unwrap().unwrap().stored_at_ms;
    assert!(rewritten > written);
    assert_eq!(
        store
            .delete_if_older(&id, 10_000, written + 10_000)
            .unwrap(),
        Deletion::KeptYoung
    );
    assert_eq!(
        store
            .delete_if_older(&id, 10_000, rewritten + 10_000)
            .unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        store
            .delete_if_older(&id, 10_000, rewritten + 10_000)
            .unwrap(),
        Deletion::Absent
    );
    assert_eq!(store.stats().chunk_count, 0);
}

/// A touch restarts the minimum-age clock of present chunks and answers presence; it never
/// moves the clock back and stores nothing for absent ids.
pub fn touch_keeps_chunks_young(store: &dyn ChunkStore) {
    let bytes = test_chunk(56, 1000);
    let id = put_new(store, &bytes);
    let absent = ChunkId::of(b"never stored");
    let written = store.info(&id).unwrap().unwrap().stored_at_ms;
    let later = written + 60_000;
    assert_eq!(
        store.touch_many(&[id, absent], later).unwrap(),
        [true, false]
    );
    assert!(!store.contains(&absent).unwrap());
    assert_eq!(store.info(&id).unwrap().unwrap().stored_at_ms, later);
    // Old by the write, young by the touch.
    assert_eq!(
        store
            .delete_if_older(&id, 10_000, written + 20_000)
            .unwrap(),
        Deletion::KeptYoung
    );
    // A touch with an older time does not move it back.
    store.touch_many(&[id], written).unwrap();
    assert_eq!(store.info(&id).unwrap().unwrap().stored_at_ms, later);
    assert_eq!(
        store.delete_if_older(&id, 10_000, later + 10_000).unwrap(),
        Deletion::Deleted
    );
    assert_eq!(store.stats().chunk_count, 0);
}

/// Touches of many chunks at once (ids in every order, repeated ids) racing deletes of the
/// same chunks from other threads: nothing deadlocks, a touch never resurrects a deleted
/// chunk as an info record without bytes, and the totals match what is stored.
pub fn touches_race_deletes_safely(store: &dyn ChunkStore) {
    let ids: Vec<ChunkId> = (0..256)
        .map(|i| put_new(store, &test_chunk(10_000 + i, 64)))
        .collect();
    let now = store.info(&ids[0]).unwrap().unwrap().stored_at_ms;
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let ids = &ids;
            scope.spawn(move || {
                for round in 0..8u64 {
                    // Each thread walks the ids in its own order, some twice.
                    let mut batch: Vec<ChunkId> = ids
                        .iter()
                        .cycle()
                        .skip(t * 37)
                        .step_by(t + 1)
                        .take(300)
                        .copied()
                        .collect();
                    if t % 2 == 1 {
                        batch.reverse();
                    }
                    let present = store.touch_many(&batch, now + round).unwrap();
                    assert_eq!(present.len(), batch.len());
                }
            });
        }
        scope.spawn(|| {
            for id in ids.iter().step_by(3) {
                store.delete_if_older(id, 0, u64::MAX).unwrap();
            }
        });
    });
    let mut kept = 0;
    for (i, id) in ids.iter().enumerate() {
        let held = store.contains(id).unwrap();
        assert_eq!(held, i % 3 != 0, "chunk {i}");
        assert_eq!(store.info(id).unwrap().is_some(), held, "chunk {i}");
        if held {
            assert_eq!(store.get(id).unwrap().len(), 64);
            kept += 1;
        }
    }
    let stats = store.stats();
    assert_eq!(stats.chunk_count, kept);
    assert_eq!(stats.used_bytes, kept * 64);
}

/// Paging with `after` visits every chunk once, in id order, with its size.
pub fn list_pages_in_id_order(store: &dyn ChunkStore) {
    let mut expected: Vec<(ChunkId, u64)> = (0..30)
        .map(|i| {
            let bytes = test_chunk(60 + i, 10 + i as usize);
            (put_new(store, &bytes), bytes.len() as u64)
        })
        .collect();
    expected.sort();
    let (mut listed, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = store.list(after, 7).unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        listed.extend(page);
        pages += 1;
        assert!(pages <= 5, "paging does not end");
    }
    assert_eq!(listed, expected);
    assert_eq!(pages, 5);
    assert!(store.list(None, 0).unwrap().is_empty());
    // `after` need not be a stored id: listing resumes at the next id up.
    let mut between = expected[9].0;
    between.0[31] = between.0[31].wrapping_add(1);
    if between < expected[10].0 {
        assert_eq!(store.list(Some(between), 1).unwrap(), [expected[10]]);
    }
}

/// The digest is the XOR of the stored ids, whatever the order of puts and deletes.
pub fn digest_is_xor_of_ids(store: &dyn ChunkStore) {
    assert_eq!(store.stats().inventory_digest, [0; 32]);
    let chunks: Vec<Vec<u8>> = (0..5).map(|i| test_chunk(100 + i, 300)).collect();
    for c in &chunks {
        put_new(store, c);
    }
    let mut xor = [0u8; 32];
    for (id, _) in store.list(None, 100).unwrap() {
        super::toggle_digest(&mut xor, &id);
    }
    let digest = store.stats().inventory_digest;
    assert_eq!(digest, xor);
    assert_ne!(digest, [0; 32]);
    for c in &chunks {
        store.delete(&ChunkId::of(c)).unwrap();
    }
    assert_eq!(store.stats().inventory_digest, [0; 32]);
    for c in chunks.iter().rev() {
        put_new(store, c);
    }
    assert_eq!(
        store.stats().inventory_digest,
        digest,
        "same set, other order"
    );
}

/// Chunks over the limit are refused; a chunk of exactly the limit is stored.
pub fn oversize_refused(store: &dyn ChunkStore) {
    let bytes = test_chunk(200, MAX_CHUNK_SIZE as usize + 1);
    let id = ChunkId::of(&bytes);
    assert_eq!(
        store.put(&id, &bytes).unwrap_err(),
        StoreError::TooLarge {
            size: MAX_CHUNK_SIZE + 1,
            max: MAX_CHUNK_SIZE
        }
    );
    assert!(!store.contains(&id).unwrap());
    let exact = &bytes[..MAX_CHUNK_SIZE as usize];
    let id = put_new(store, exact);
    assert_eq!(store.get(&id).unwrap(), exact);
}

/// A copy that fails its hash is never returned, and is gone after the first read.
pub fn corrupt_copy_is_dropped(store: &dyn ChunkStore) {
    let good = put_new(store, &test_chunk(300, 100_000));
    let bad = put_new(store, &test_chunk(301, 100_000));
    let bad_ranged = put_new(store, &test_chunk(302, 100));
    assert!(!store.corrupt_for_test(&ChunkId::of(b"absent")).unwrap());
    assert!(store.corrupt_for_test(&bad).unwrap());
    assert!(store.corrupt_for_test(&bad_ranged).unwrap());
    assert_eq!(store.get(&bad).unwrap_err(), StoreError::Corrupt(bad));
    assert_eq!(
        store.get_range(&bad_ranged, 0..1).unwrap_err(),
        StoreError::Corrupt(bad_ranged)
    );
    assert_eq!(
        store.contains_many(&[good, bad, bad_ranged]).unwrap(),
        [true, false, false]
    );
    assert_eq!(store.get(&bad).unwrap_err(), StoreError::NotFound(bad));
    let stats = store.stats();
    assert_eq!((stats.chunk_count, stats.used_bytes), (1, 100_000));
    assert_eq!(stats.inventory_digest, good.0);
    // A fresh good copy can be stored again (this is what repair does).
    assert_eq!(
        store.put(&bad, &test_chunk(301, 100_000)).unwrap(),
        PutOutcome::Stored
    );
}

/// Verification times are recorded; absent chunks are ignored.
pub fn mark_verified(store: &dyn ChunkStore) {
    let id = put_new(store, &test_chunk(400, 10));
    let stored_at = store.info(&id).unwrap().unwrap().stored_at_ms;
    store.mark_verified(&id, stored_at + 5000).unwrap();
    let info = store.info(&id).unwrap().unwrap();
    assert_eq!(
        (info.stored_at_ms, info.last_verified_ms),
        (stored_at, stored_at + 5000)
    );
    store.mark_verified(&ChunkId::of(b"absent"), 1).unwrap();
    assert_eq!(store.info(&ChunkId::of(b"absent")).unwrap(), None);
}

/// A store of [`SMALL_CAPACITY`] bytes refuses what does not fit and stores nothing of it.
pub fn capacity_refusal(store: &dyn ChunkStore) {
    assert_eq!(store.stats().capacity_bytes, SMALL_CAPACITY);
    let first = put_new(store, &test_chunk(500, 600 << 10));
    let second = test_chunk(501, 600 << 10);
    let id = ChunkId::of(&second);
    assert_eq!(
        store.put(&id, &second).unwrap_err(),
        StoreError::DiskFull {
            needed: 600 << 10,
            available: SMALL_CAPACITY - (600 << 10)
        }
    );
    assert!(!store.contains(&id).unwrap());
    assert_eq!(store.stats().used_bytes, 600 << 10);
    assert!(store.delete(&first).unwrap());
    assert_eq!(store.put(&id, &second).unwrap(), PutOutcome::Stored);
}
