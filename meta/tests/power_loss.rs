//! Power loss, not SIGKILL: the controller's RocksDB metadata store on lazyfs (a FUSE
//! filesystem that drops every write not fsynced when the power is cut). Every commit that
//! returned is there after the cut, and the store reopens with the same identity. Needs root
//! and /dev/fuse (REDCLOUD_FUSE_REQUIRED=1, as in CI, makes a skip a failure).

mod common;

use common::*;
use redcloud_meta::{MetaStore, RocksStorage};

#[test]
fn every_acknowledged_commit_survives_a_power_cut() {
    if !lazyfs::usable_for("metadata power loss") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mount = lazyfs::Mount::new(dir.path()).expect("mount lazyfs");
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut digest = None;
    for round in 0..3u8 {
        let path = mount.path().join("meta");
        let storage = RocksStorage::open(&path).expect("open after the cut");
        let mut store = MetaStore::open(Box::new(storage), config("node-p", 4)).unwrap();
        if let Some(d) = digest {
            assert_eq!(
                store.digest(),
                d,
                "round {round}: the durable state changed"
            );
        }
        for (name, vid) in &acked {
            let h = store.history("alice", name).unwrap();
            assert!(
                h.iter().any(|v| &v.vid == vid),
                "round {round}: acknowledged {name}@{vid} lost in the power cut"
            );
        }
        if round == 0 {
            store.register_user("alice", "pw", T0).unwrap();
        }
        for i in 0..20u8 {
            let name = format!("f{}", i % 7);
            let (v, _) = store
                .add_version(
                    "alice",
                    &name,
                    version(round * 20 + i, &["t"]),
                    T0 + u64::from(i),
                    None,
                )
                .unwrap();
            acked.push((name, v.vid));
        }
        assert!(store.verify_password("alice", "pw").unwrap());
        digest = Some(store.digest());
        let survived = mount.power_cut();
        drop(store);
        mount = mount.remount(survived).expect("remount");
    }
    let storage = RocksStorage::open(mount.path().join("meta")).unwrap();
    let store = MetaStore::open(Box::new(storage), config("node-p", 4)).unwrap();
    assert_eq!(Some(store.digest()), digest);
    assert!(store.verify_password("alice", "pw").unwrap());
}
