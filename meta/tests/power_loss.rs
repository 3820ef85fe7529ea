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

/// Group commit: 64 commits sent to the metadata owner at once share syncs, and every one
/// that was acknowledged is there after a power cut that follows the acknowledgements.
#[test]
fn concurrent_commits_acknowledged_by_the_owner_survive_a_power_cut() {
    if !lazyfs::usable_for("metadata group commit under power loss") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = lazyfs::Mount::new(dir.path()).expect("mount lazyfs");
    let path = mount.path().join("meta");
    let storage = RocksStorage::open(&path).unwrap();
    let mut store = MetaStore::open(Box::new(storage), config("node-g", 4)).unwrap();
    store.register_user("alice", "pw", T0).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (handle, _commits) = redcloud_meta::handle::MetaHandle::spawn(store);
    let acked: Vec<(String, String)> = rt.block_on(async {
        let tasks: Vec<_> = (0..64u8)
            .map(|i| {
                let h = handle.clone();
                tokio::spawn(async move {
                    h.mutate(move |s| {
                        let name = format!("g{i}");
                        let (v, c) =
                            s.add_version("alice", &name, version(i, &["t"]), T0 + 1, None)?;
                        Ok(((name, v.vid), vec![c]))
                    })
                    .await
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.push(t.await.unwrap().expect("commit acknowledged"));
        }
        acked
    });
    // The power goes off with the owner still running: nothing is closed cleanly.
    let survived = mount.power_cut();
    rt.block_on(handle.shutdown());
    let mount = mount.remount(survived).expect("remount");
    let storage = RocksStorage::open(mount.path().join("meta")).unwrap();
    let store = MetaStore::open(Box::new(storage), config("node-g", 4)).unwrap();
    for (name, vid) in &acked {
        let h = store.history("alice", name).unwrap();
        assert!(
            h.iter().any(|v| &v.vid == vid),
            "acknowledged {name}@{vid} lost in the power cut"
        );
    }
}
