//! Persistence: reopen after commits (RocksDB and memory), compaction, the clock high-water
//! mark, and corrupt stored documents.

mod common;

use common::*;
use redcloud_meta::{DocStorage, MetaError, MetaStore, NodeId, RocksStorage};

fn rocks(path: &std::path::Path) -> Box<dyn DocStorage> {
    Box::new(RocksStorage::open(path).unwrap())
}

#[test]
fn reopen_restores_everything_and_continues_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("node-a", 4);
    cfg.limits.compact_after_increments = 5; // exercise inline compaction too
    let mut s = MetaStore::open(rocks(dir.path()), cfg.clone()).unwrap();
    let mut vids = Vec::new();
    for i in 0..12u8 {
        let name = format!("f{}", i % 4);
        vids.push(
            s.add_version("alice", &name, version(i, &["t"]), T0 + u64::from(i), None)
                .unwrap()
                .0
                .vid,
        );
    }
    s.delete("alice", "f0", T0 + 20, None).unwrap();
    s.register_user("alice", "pw", T0).unwrap();
    s.set_trash_retention(5, T0).unwrap();
    let digest = s.digest();
    let listing = s.list("alice", &[]).unwrap();
    let high_water = s.clock_high_water();
    drop(s);

    let mut s = MetaStore::open(rocks(dir.path()), cfg.clone()).unwrap();
    assert_eq!(s.digest(), digest);
    assert_eq!(s.list("alice", &[]).unwrap(), listing);
    assert!(s.verify_password("alice", "pw").unwrap());
    assert_eq!(s.settings().unwrap().trash_retention_ms, 5);
    assert_eq!(s.clock_high_water(), high_water);
    for (i, vid) in vids.iter().enumerate() {
        let h = s.history("alice", &format!("f{}", i % 4)).unwrap();
        assert!(h.iter().any(|v| &v.vid == vid));
    }
    // A new incarnation writes with a fresh actor (a reused one would be refused by peers), and
    // its clock continues past the old high-water mark even with a wall clock far behind.
    let (v, c) = s
        .add_version("alice", "f1", version(50, &[]), T0 - 3_600_000, None)
        .unwrap();
    assert!(v.created > high_water);
    let mut peer = mem_store("node-b", 4);
    sync_pair(&mut s, &mut peer, T0);
    peer.apply_changes(c.doc, &c.changes, T0).unwrap();
    assert_eq!(peer.stats().changes_rejected, 0);
    assert_eq!(peer.digest(), s.digest());
    s.compact_all().unwrap();
    let digest = s.digest();
    drop(s);
    let s = MetaStore::open(rocks(dir.path()), cfg).unwrap();
    assert_eq!(s.digest(), digest);
}

#[test]
fn reopen_keeps_shards_and_refuses_another_node() {
    let dir = tempfile::tempdir().unwrap();
    drop(MetaStore::open(rocks(dir.path()), config("node-a", 7)).unwrap());
    let s = MetaStore::open(rocks(dir.path()), config("node-a", 16)).unwrap();
    assert_eq!(s.shards(), 7, "an existing store keeps its shard count");
    drop(s);
    let e = MetaStore::open(rocks(dir.path()), config("node-b", 7)).unwrap_err();
    assert!(matches!(e, MetaError::NodeMismatch { .. }), "{e}");
    let mut c = config("node-z", 0);
    c.node_id = NodeId::new("node-z").unwrap();
    let e = MetaStore::open(Box::new(redcloud_meta::MemStorage::new()), c).unwrap_err();
    assert!(e.to_string().contains("shards"), "{e}");
}

#[test]
fn corrupt_increment_fails_open_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = MetaStore::open(rocks(dir.path()), config("node-a", 4)).unwrap();
    let (_, c) = s
        .add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    drop(s);
    let mut storage = rocks(dir.path());
    storage
        .append(&c.doc.to_string(), b"definitely not automerge", &[])
        .unwrap();
    drop(storage);
    let e = MetaStore::open(rocks(dir.path()), config("node-a", 4)).unwrap_err();
    assert!(matches!(e, MetaError::CorruptDocument { .. }), "{e}");
    assert!(e.to_string().contains(&c.doc.to_string()), "{e}");
}

#[test]
fn corrupt_snapshot_fails_open_naming_the_document() {
    let s = mem_store("node-a", 2);
    let mut storage = s.into_storage();
    storage
        .compact("cluster", &[0x85, 0x6f, 0x4a, 0x83, 1, 2, 3])
        .unwrap();
    let e = MetaStore::open(storage, config("node-a", 2)).unwrap_err();
    assert!(
        e.to_string().contains("stored document cluster is corrupt"),
        "{e}"
    );

    // A valid Automerge document that lacks the genesis maps is refused too.
    let s = mem_store("node-a", 2);
    let mut storage = s.into_storage();
    storage
        .compact("files/1", &automerge::Automerge::new().save())
        .unwrap();
    let e = MetaStore::open(storage, config("node-a", 2)).unwrap_err();
    assert!(e.to_string().contains("files/1"), "{e}");
}

#[test]
fn change_with_missing_dependency_in_storage_is_corruption() {
    let mut a = mem_store("node-a", 2);
    let (_, c1) = a
        .add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    let (_, c2) = a
        .add_version("alice", "f", version(2, &[]), T0 + 1, None)
        .unwrap();
    assert_eq!(c1.doc, c2.doc);
    let s = mem_store("node-a", 2);
    let mut storage = s.into_storage();
    storage
        .append(&c2.doc.to_string(), &c2.changes, &[])
        .unwrap();
    let e = MetaStore::open(storage, config("node-a", 2)).unwrap_err();
    assert!(e.to_string().contains("missing dependencies"), "{e}");
}
