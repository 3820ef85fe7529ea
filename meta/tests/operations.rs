//! Scenario tests of the operations: versions, deletes, restores, conflicts, tags, users,
//! secrets, membership, clocks and replication hooks.

mod common;

use common::*;
use redcloud_meta::{ChunkserverState, MetaError, MetaStore, ReplicationPolicy, Timestamp};

fn file_names(store: &MetaStore, owner: &str, t: &[&str]) -> Vec<String> {
    store
        .list(owner, &tags(t))
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect()
}

#[test]
fn add_version_then_query() {
    let mut s = mem_store("n1", 4);
    let (v1, _) = s
        .add_version("alice", "a.txt", version(1, &["work", "2024"]), T0, None)
        .unwrap();
    s.add_version("alice", "b.txt", version(2, &["work"]), T0 + 1, None)
        .unwrap();
    s.add_version("bob", "a.txt", version(3, &["work"]), T0 + 2, None)
        .unwrap();
    let (v2, _) = s
        .add_version("alice", "a.txt", version(4, &["new"]), T0 + 3, None)
        .unwrap();

    let f = s.file("alice", "a.txt").unwrap().unwrap();
    assert_eq!(f.head.vid, v2.vid);
    assert_eq!(f.head.size, version(4, &[]).size);
    assert_eq!(f.tags, tags(&["2024", "new", "work"]));
    assert!(!f.conflicted);
    assert_eq!(file_names(&s, "alice", &[]), ["a.txt", "b.txt"]);
    assert_eq!(file_names(&s, "alice", &["work"]), ["a.txt", "b.txt"]);
    assert_eq!(file_names(&s, "alice", &["work", "new"]), ["a.txt"]);
    assert!(file_names(&s, "alice", &["nope"]).is_empty());
    assert_eq!(file_names(&s, "bob", &[]), ["a.txt"]);

    let h = s.history("alice", "a.txt").unwrap();
    assert_eq!(
        h.iter().map(|v| v.vid.as_str()).collect::<Vec<_>>(),
        [&v1.vid, &v2.vid]
    );
    assert!(h[1].is_head && h[1].is_candidate && !h[0].is_candidate);
    assert!(v2.vv.compare(&v1.vv) == redcloud_meta::Causality::After);
    assert_eq!(s.file_count().unwrap(), 3);
    // Both versions' chunks are retained.
    let live = s.live_chunks().unwrap();
    assert!(live.contains_key(&[1; 32]) && live.contains_key(&[4; 32]));
}

#[test]
fn validation_errors_write_nothing() {
    let mut s = mem_store("n1", 4);
    let digest = s.digest();
    let bad: Vec<(Result<_, MetaError>, &str)> = vec![
        (
            s.add_version("alice", "a/b", version(1, &[]), T0, None)
                .map(|_| ()),
            "file name",
        ),
        (
            s.add_version("Alice", "a", version(1, &[]), T0, None)
                .map(|_| ()),
            "user name",
        ),
        (
            s.add_version("alice", "a", version(1, &["x\ny"]), T0, None)
                .map(|_| ()),
            "tag",
        ),
        (
            s.add_version("alice", &"n".repeat(256), version(1, &[]), T0, None)
                .map(|_| ()),
            "file name",
        ),
        (
            s.add_version(
                "alice",
                "a",
                redcloud_meta::NewVersion {
                    size: 1,
                    ..version(1, &[])
                },
                T0,
                None,
            )
            .map(|_| ()),
            "chunks",
        ),
        (
            s.register_user("bad user", "pw", T0).map(|_| ()),
            "user name",
        ),
        (s.register_user("carol", "", T0).map(|_| ()), "password"),
        (
            s.upsert_chunkserver("cs/1", "127.0.0.1:1", "", T0)
                .map(|_| ()),
            "chunkserver id",
        ),
    ];
    for (r, field) in bad {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(field), "{e:?} should name {field}");
    }
    assert!(matches!(
        s.delete("alice", "ghost", T0, None),
        Err(MetaError::NotFound(_))
    ));
    assert_eq!(
        s.digest(),
        digest,
        "a failed operation changed the documents"
    );
}

#[test]
fn delete_undelete_and_restore() {
    let mut s = mem_store("n1", 4);
    let (v1, _) = s
        .add_version("alice", "a", version(1, &["t"]), T0, None)
        .unwrap();
    let (v2, _) = s
        .add_version("alice", "a", version(2, &[]), T0 + 1, None)
        .unwrap();
    let (tomb, _) = s.delete("alice", "a", T0 + 2, None).unwrap();
    assert!(tomb.deleted);
    assert_eq!(s.file("alice", "a").unwrap(), None);
    assert!(s.list("alice", &[]).unwrap().is_empty());
    assert_eq!(s.file_count().unwrap(), 0);
    assert!(matches!(
        s.delete("alice", "a", T0 + 3, None),
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        s.add_tags("alice", "a", &tags(&["x"]), T0),
        Err(MetaError::NotFound(_))
    ));
    // Old versions stay in history and keep their chunks alive.
    assert_eq!(s.history("alice", "a").unwrap().len(), 3);
    assert!(s.live_chunks().unwrap().contains_key(&[1; 32]));
    // A tombstone cannot be restored; an old version can (undelete + roll back).
    let e = s
        .restore("alice", "a", &tomb.vid, T0 + 4, None)
        .unwrap_err();
    assert!(e.to_string().contains("deletion marker"), "{e}");
    assert!(matches!(
        s.restore("alice", "a", "nope", T0, None),
        Err(MetaError::NotFound(_))
    ));
    let (r, _) = s.restore("alice", "a", &v1.vid, T0 + 5, None).unwrap();
    assert_eq!(r.restored_from.as_deref(), Some(v1.vid.as_str()));
    let f = s.file("alice", "a").unwrap().unwrap();
    assert_eq!(
        (f.head.vid.as_str(), f.head.blake3),
        (r.vid.as_str(), [1; 32])
    );
    assert_eq!(f.tags, tags(&["t"]), "tags survive delete and undelete");
    assert_ne!(r.vid, v2.vid);
    assert_eq!(s.history("alice", "a").unwrap().len(), 4);
}

#[test]
fn concurrent_writes_conflict_then_a_later_write_supersedes() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    let (va, ca) = a
        .add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    let (vb, cb) = b
        .add_version("alice", "f", version(2, &[]), T0 + 5, None)
        .unwrap();
    deliver(&mut a, &cb, T0 + 6);
    deliver(&mut b, &ca, T0 + 6);
    for s in [&a, &b] {
        let c = s.conflicts("alice").unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].candidates.len(), 2);
        // Concurrent: the higher HLC (b's, written later) wins.
        assert_eq!(c[0].winner, vb.vid);
        assert!(s.file("alice", "f").unwrap().unwrap().conflicted);
        let h = s.history("alice", "f").unwrap();
        assert!(h.iter().all(|v| v.is_candidate));
        assert!(h.iter().any(|v| v.vid == va.vid));
    }
    assert_eq!(a.conflicts("alice").unwrap(), b.conflicts("alice").unwrap());

    // A write on a replica that saw both supersedes both.
    let (v3, c3) = a
        .add_version("alice", "f", version(3, &[]), T0 + 7, None)
        .unwrap();
    assert!(v3.vv.compare(&va.vv) == redcloud_meta::Causality::After);
    assert!(v3.vv.compare(&vb.vv) == redcloud_meta::Causality::After);
    deliver(&mut b, &c3, T0 + 8);
    for s in [&a, &b] {
        assert!(s.conflicts("alice").unwrap().is_empty());
        let f = s.file("alice", "f").unwrap().unwrap();
        assert_eq!(f.head.vid, v3.vid);
        assert!(!f.conflicted);
        assert_eq!(s.history("alice", "f").unwrap().len(), 3);
    }
}

#[test]
fn resolve_conflict_picks_a_loser() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    let (va, ca) = a
        .add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    let (_, cb) = b.delete_or_write_for_test();
    deliver(&mut a, &cb, T0 + 6);
    deliver(&mut b, &ca, T0 + 6);
    let c = a.conflicts("alice").unwrap();
    assert_eq!(c.len(), 1);
    assert_ne!(c[0].winner, va.vid, "the later concurrent write wins");
    let e = b
        .resolve_conflict("alice", "f", "nope", T0 + 7, None)
        .unwrap_err();
    assert!(
        e.to_string().contains("not a current head candidate"),
        "{e}"
    );
    let (r, cr) = b
        .resolve_conflict("alice", "f", &va.vid, T0 + 7, None)
        .unwrap();
    deliver(&mut a, &cr, T0 + 8);
    for s in [&a, &b] {
        assert!(s.conflicts("alice").unwrap().is_empty());
        let f = s.file("alice", "f").unwrap().unwrap();
        assert_eq!(
            (f.head.vid.as_str(), f.head.blake3),
            (r.vid.as_str(), [1; 32])
        );
    }
}

trait WriteForTest {
    fn delete_or_write_for_test(&mut self) -> (redcloud_meta::VersionView, redcloud_meta::Commit);
}

impl WriteForTest for MetaStore {
    fn delete_or_write_for_test(&mut self) -> (redcloud_meta::VersionView, redcloud_meta::Commit) {
        self.add_version("alice", "f", version(2, &[]), T0 + 5, None)
            .unwrap()
    }
}

#[test]
fn concurrent_tag_add_beats_remove() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    let (_, c0) = a
        .add_version("alice", "f", version(1, &["t", "u"]), T0, None)
        .unwrap();
    deliver(&mut b, &c0, T0);
    let ra = a
        .remove_tags("alice", "f", &tags(&["t", "u"]), T0 + 1)
        .unwrap()
        .unwrap();
    let ab = b
        .add_tags("alice", "f", &tags(&["t"]), T0 + 1)
        .unwrap()
        .unwrap();
    deliver(&mut a, &ab, T0 + 2);
    deliver(&mut b, &ra, T0 + 2);
    for s in [&a, &b] {
        assert_eq!(s.file("alice", "f").unwrap().unwrap().tags, tags(&["t"]));
    }
    // Removing a tag the file does not have writes nothing.
    assert_eq!(
        a.remove_tags("alice", "f", &tags(&["zzz"]), T0 + 3)
            .unwrap(),
        None
    );
}

#[test]
fn causal_context_orders_writes_across_a_lagging_controller() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    // b's wall clock is 10 minutes behind a's and b has not seen a's write.
    let (va, ca) = a
        .add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    let behind = T0 - 10 * 60 * 1000;
    let (vb, cb) = b
        .add_version("alice", "f", version(2, &[]), behind, Some(va.created))
        .unwrap();
    assert!(vb.created > va.created);
    deliver(&mut a, &cb, T0);
    deliver(&mut b, &ca, behind);
    for s in [&a, &b] {
        assert_eq!(s.file("alice", "f").unwrap().unwrap().head.vid, vb.vid);
    }
    // Without the context, b's write would have lost.
    let mut c = mem_store("node-c", 4);
    let (vc, _) = c
        .add_version("alice", "f", version(3, &[]), behind, None)
        .unwrap();
    assert!(vc.created < va.created);
}

#[test]
fn far_future_context_orders_the_write_without_dragging_the_clock() {
    let mut a = mem_store("node-a", 4);
    // The client last wrote through a controller whose clock ran 2 hours ahead. Its next write
    // is not refused, and it still wins over what the client saw; our clock is not dragged.
    let future = Timestamp::from_wall_ms(T0 + 2 * 3600 * 1000);
    let (v, _) = a
        .add_version("alice", "f", version(1, &[]), T0, Some(future))
        .unwrap();
    assert!(v.created > future, "{} <= {future}", v.created);
    assert_eq!(a.stats().clock_rejections, 1);
    let (next, _) = a
        .add_version("alice", "other", version(9, &[]), T0 + 1, None)
        .unwrap();
    assert!(
        next.created < future,
        "the clock was dragged to {}",
        next.created
    );

    // A controller whose clock runs 2 hours ahead: its change is applied, the clock not dragged.
    let mut fast = mem_store("node-fast", 4);
    let (vf, cf) = fast
        .add_version("alice", "g", version(2, &[]), T0 + 2 * 3600 * 1000, None)
        .unwrap();
    let out = a.apply_changes(cf.doc, &cf.changes, T0).unwrap();
    assert_eq!(out.applied, 1);
    assert_eq!(a.stats().clock_rejections, 2);
    assert!(a.clock_high_water() < vf.created);
    assert_eq!(a.file("alice", "g").unwrap().unwrap().head.vid, vf.vid);
    // 10 minutes ahead is merged.
    let mut near = mem_store("node-near", 4);
    let (vn, cn) = near
        .add_version("alice", "h", version(3, &[]), T0 + 600_000, None)
        .unwrap();
    a.apply_changes(cn.doc, &cn.changes, T0).unwrap();
    assert_eq!(a.stats().clock_rejections, 2);
    assert!(a.clock_high_water() >= vn.created);
}

#[test]
fn out_of_order_delivery_waits_in_a_bounded_queue() {
    let mut a = mem_store("node-a", 4);
    let mut commits = Vec::new();
    for i in 0..4u8 {
        commits.push(
            a.add_version("alice", "f", version(i, &[]), T0 + u64::from(i), None)
                .unwrap()
                .1,
        );
    }
    assert!(commits.iter().all(|c| c.doc == commits[0].doc));
    let doc = commits[0].doc;

    let mut b = mem_store("node-b", 4);
    let out = b.apply_changes(doc, &commits[2].changes, T0).unwrap();
    assert_eq!((out.applied, out.pending), (0, 1));
    let out = b.apply_changes(doc, &commits[1].changes, T0).unwrap();
    assert_eq!((out.applied, out.pending), (0, 2));
    let out = b.apply_changes(doc, &commits[0].changes, T0).unwrap();
    assert_eq!((out.applied, out.pending), (3, 0));
    // Duplicates are no-ops.
    let out = b.apply_changes(doc, &commits[0].changes, T0).unwrap();
    assert_eq!((out.applied, out.pending), (0, 0));

    // A queue of 1: the oldest waiting change is dropped and counted; sync recovers it.
    let mut cfg = config("node-c", 4);
    cfg.limits.max_pending_changes = 1;
    let mut c = MetaStore::open(Box::new(redcloud_meta::MemStorage::new()), cfg).unwrap();
    c.apply_changes(doc, &commits[2].changes, T0).unwrap();
    let out = c.apply_changes(doc, &commits[3].changes, T0).unwrap();
    assert_eq!(out.pending, 1);
    assert_eq!(c.stats().pending_dropped, 1);
    sync_pair(&mut a, &mut c, T0);
    assert_eq!(a.digest(), c.digest());
    assert_eq!(c.history("alice", "f").unwrap().len(), 4);
    assert_eq!(
        c.stats().pending,
        0,
        "sync emptied the queue of changes it delivered"
    );
}

#[test]
fn users_and_passwords() {
    let mut s = mem_store("n1", 4);
    s.register_user("alice", "correct horse", T0).unwrap();
    assert!(matches!(
        s.register_user("alice", "x", T0),
        Err(MetaError::AlreadyExists(_))
    ));
    assert!(s.verify_password("alice", "correct horse").unwrap());
    assert!(!s.verify_password("alice", "wrong").unwrap());
    assert!(!s.verify_password("nobody", "x").unwrap());
    assert!(!s.verify_password("Bad User", "x").unwrap());
    assert_eq!(s.users().unwrap(), ["alice"]);
}

#[test]
fn default_password_cost_is_argon2id() {
    let mut c = config("n1", 1);
    c.password_cost = redcloud_meta::PasswordCost::default();
    let mut s = MetaStore::open(Box::new(redcloud_meta::MemStorage::new()), c).unwrap();
    s.register_user("alice", "pw", T0).unwrap();
    assert!(s.verify_password("alice", "pw").unwrap());
}

#[test]
fn concurrent_registration_of_one_name_locks_it_for_both() {
    let mut a = mem_store("node-a", 2);
    let mut b = mem_store("node-b", 2);
    a.register_user("alice", "from-a", T0).unwrap();
    b.register_user("alice", "from-b", T0).unwrap();
    // Before the heal each side's registrant logs in.
    assert!(a.verify_password("alice", "from-a").unwrap());
    assert!(b.verify_password("alice", "from-b").unwrap());
    sync_pair(&mut a, &mut b, T0);
    // After it, either password would open both registrants' files: neither does.
    for s in [&a, &b] {
        assert_eq!(
            s.login_hashes("alice").unwrap(),
            redcloud_meta::Login::Contested
        );
        assert!(!s.verify_password("alice", "from-a").unwrap());
        assert!(!s.verify_password("alice", "from-b").unwrap());
        assert_eq!(s.users().unwrap(), ["alice"]);
    }
}

#[test]
fn secrets_one_per_controller() {
    let mut a = mem_store("node-a", 2);
    let mut b = mem_store("node-b", 2);
    let (sa, c1) = a.ensure_secret(T0).unwrap();
    assert!(c1.is_some());
    let (sa2, c2) = a.ensure_secret(T0).unwrap();
    assert_eq!((sa2, c2), (sa.clone(), None));
    let (sb, _) = b.ensure_secret(T0).unwrap();
    sync_pair(&mut a, &mut b, T0);
    let all = a.secrets().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&sa) && all.contains(&sb));
    assert_eq!(all, b.secrets().unwrap());
    // After a restart a controller finds its own secret again.
    let a = reopen(a);
    let mut a = a;
    assert_eq!(a.ensure_secret(T0).unwrap(), (sa, None));
}

#[test]
fn membership_and_settings() {
    let mut s = mem_store("n1", 4);
    let node = redcloud_meta::NodeId::new("node-b").unwrap();
    let p2p = vec!["/ip4/10.0.0.2/tcp/7000".to_string()];
    assert!(
        s.upsert_controller(&node, "10.0.0.2:7100", &p2p, T0)
            .unwrap()
            .is_some()
    );
    assert!(
        s.upsert_controller(&node, "10.0.0.2:7100", &p2p, T0 + 9)
            .unwrap()
            .is_none()
    );
    assert!(
        s.upsert_controller(&node, "10.0.0.3:7100", &p2p, T0 + 10)
            .unwrap()
            .is_some()
    );
    let c = s.controllers().unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].grpc_addr, "10.0.0.3:7100");
    assert_eq!(c[0].first_seen.wall_ms(), T0, "first seen is kept");

    assert!(
        s.upsert_chunkserver("cs1", "10.0.0.9:7200", "z1", T0)
            .unwrap()
            .is_some()
    );
    assert!(
        s.upsert_chunkserver("cs1", "10.0.0.9:7200", "z1", T0)
            .unwrap()
            .is_none()
    );
    assert!(
        s.set_chunkserver_state("cs1", ChunkserverState::Draining, T0)
            .unwrap()
            .is_some()
    );
    assert!(
        s.set_chunkserver_state("cs1", ChunkserverState::Draining, T0)
            .unwrap()
            .is_none()
    );
    // Re-announcing keeps the administrative state.
    s.upsert_chunkserver("cs1", "10.0.0.10:7200", "z1", T0)
        .unwrap();
    let cs = s.chunkservers().unwrap();
    assert_eq!(
        (cs[0].address.as_str(), cs[0].state),
        ("10.0.0.10:7200", ChunkserverState::Draining)
    );
    assert!(matches!(
        s.set_chunkserver_state("ghost", ChunkserverState::Removed, T0),
        Err(MetaError::NotFound(_))
    ));

    let st = s.settings().unwrap();
    assert_eq!((st.replication, st.shards), (ReplicationPolicy::All, 4));
    s.set_replication(ReplicationPolicy::Count(2), T0).unwrap();
    assert_eq!(
        s.settings().unwrap().replication,
        ReplicationPolicy::Count(2)
    );
    assert_eq!(
        "all".parse::<ReplicationPolicy>().unwrap(),
        ReplicationPolicy::All
    );
    let e = "0".parse::<ReplicationPolicy>().unwrap_err().to_string();
    assert!(e.contains("replication"), "{e}");
}

#[test]
fn purge_drops_only_expired_tombstoned_files() {
    let mut s = mem_store("n1", 4);
    s.set_trash_retention(1000, T0).unwrap();
    s.add_version("alice", "gone", version(1, &["t"]), T0, None)
        .unwrap();
    s.add_version("alice", "gone", version(2, &[]), T0 + 1, None)
        .unwrap();
    s.delete("alice", "gone", T0 + 2, None).unwrap();
    s.add_version("alice", "kept", version(3, &[]), T0, None)
        .unwrap();
    s.add_version("alice", "recent", version(4, &[]), T0, None)
        .unwrap();
    s.delete("alice", "recent", T0 + 5000, None).unwrap();

    let out = s.purge_expired(T0 + 2000).unwrap();
    assert_eq!((out.files, out.versions), (1, 3));
    assert!(s.history("alice", "gone").unwrap().is_empty());
    assert_eq!(s.history("alice", "recent").unwrap().len(), 2);
    let live = s.live_chunks().unwrap();
    assert!(!live.contains_key(&[1; 32]) && !live.contains_key(&[2; 32]));
    assert!(live.contains_key(&[3; 32]) && live.contains_key(&[4; 32]));
    assert_eq!(s.purge_expired(T0 + 2000).unwrap().files, 0);
    // The name can be used again.
    s.add_version("alice", "gone", version(5, &[]), T0 + 3000, None)
        .unwrap();
    assert!(s.file("alice", "gone").unwrap().unwrap().tags.is_empty());
}

#[test]
fn write_racing_with_purge_survives() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    a.set_trash_retention(1000, T0).unwrap();
    a.add_version("alice", "f", version(1, &[]), T0, None)
        .unwrap();
    a.delete("alice", "f", T0 + 1, None).unwrap();
    sync_pair(&mut a, &mut b, T0 + 2);
    let (vb, _) = b
        .restore(
            "alice",
            "f",
            &a.history("alice", "f").unwrap()[0].vid,
            T0 + 3,
            None,
        )
        .unwrap();
    assert_eq!(a.purge_expired(T0 + 5000).unwrap().files, 1);
    sync_pair(&mut a, &mut b, T0 + 6000);
    for s in [&a, &b] {
        let f = s.file("alice", "f").unwrap().unwrap();
        assert_eq!(f.head.vid, vb.vid);
        assert!(s.live_chunks().unwrap().contains_key(&[1; 32]));
    }
}

#[test]
fn every_file_op_stays_in_one_document() {
    let mut s = mem_store("n1", 16);
    for i in 0..50 {
        let name = format!("file-{i}");
        let doc = s.file_doc("alice", &name);
        let (_, c) = s
            .add_version("alice", &name, version(1, &["t"]), T0, None)
            .unwrap();
        assert_eq!(c.doc, doc);
        assert_eq!(c.heads, s.heads(doc).unwrap());
    }
    let used: std::collections::BTreeSet<_> = (0..50)
        .map(|i| s.file_doc("alice", &format!("file-{i}")))
        .collect();
    assert!(used.len() > 8, "names spread over shards: {used:?}");
    assert_eq!(s.list("alice", &tags(&["t"])).unwrap().len(), 50);
}

/// A heartbeat (address change) on one controller and a drain on another, concurrently: after
/// sync the server is draining at its new address. When both were one key, the heartbeat's
/// write could undo the drain.
#[test]
fn a_concurrent_heartbeat_does_not_undo_a_drain() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    a.upsert_chunkserver("cs1", "10.0.0.9:7200", "z", T0)
        .unwrap();
    sync_pair(&mut a, &mut b, T0);
    // Concurrently: b drains it, a hears a heartbeat from a new address (a later clock).
    b.set_chunkserver_state("cs1", ChunkserverState::Draining, T0 + 1)
        .unwrap();
    a.upsert_chunkserver("cs1", "10.0.0.10:7200", "z", T0 + 1_000)
        .unwrap();
    sync_pair(&mut a, &mut b, T0 + 2_000);
    for s in [&a, &b] {
        let cs = s.chunkservers().unwrap();
        assert_eq!(
            (cs[0].address.as_str(), cs[0].state),
            ("10.0.0.10:7200", ChunkserverState::Draining),
            "on {}",
            s.node_id()
        );
    }
}

/// `--replication` seeds only a new cluster: a seed never overrides an explicit
/// `set-replication`, even one made concurrently or earlier on another controller.
#[test]
fn a_replication_seed_never_overrides_an_explicit_policy() {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    a.set_replication(ReplicationPolicy::Count(3), T0).unwrap();
    // b, not yet synced, starts with `--replication 1`.
    b.seed_replication(ReplicationPolicy::Count(1), T0 + 5_000)
        .unwrap();
    sync_pair(&mut a, &mut b, T0 + 6_000);
    for s in [&a, &b] {
        assert_eq!(
            s.settings().unwrap().replication,
            ReplicationPolicy::Count(3),
            "on {}",
            s.node_id()
        );
    }
    // A seed on a cluster that already has a policy writes nothing.
    assert!(
        a.seed_replication(ReplicationPolicy::All, T0 + 7_000)
            .unwrap()
            .is_none()
    );
}

/// A controller whose clock was five minutes slow deletes a file; a healthy controller with a
/// one-minute trash retention receives the tombstone. By the tombstone's own (slow) time the
/// file is long expired, but the trash keeps it until the healthy controller itself has held
/// the tombstone for the retention period.
#[test]
fn a_slow_clocks_deletion_still_gets_the_full_trash_retention() {
    let minute = 60_000;
    let mut slow = mem_store("node-slow", 2);
    let mut healthy = mem_store("node-ok", 2);
    healthy.set_trash_retention(minute, T0).unwrap();
    healthy
        .add_version("alice", "f", version(1, &["t"]), T0, None)
        .unwrap();
    sync_pair(&mut slow, &mut healthy, T0);
    slow.delete("alice", "f", T0 - 5 * minute, None).unwrap();
    sync_pair(&mut slow, &mut healthy, T0);
    // Just received (monotonic 0): the wall-clock test alone would purge it now.
    let out = healthy.purge_expired_at(T0 + 1, 0).unwrap();
    assert_eq!(out.files, 0, "purged on the strength of a slow clock");
    let out = healthy.purge_expired_at(T0 + 30_000, 30_000).unwrap();
    assert_eq!(out.files, 0);
    assert_eq!(healthy.history("alice", "f").unwrap().len(), 2);
    // Held here for the whole retention: now it goes.
    let out = healthy.purge_expired_at(T0 + minute, minute).unwrap();
    assert_eq!(out.files, 1);
    assert!(healthy.history("alice", "f").unwrap().is_empty());
}

/// `n` files of `alice`, one in ten named twice (the second time with new content), one with
/// a name the store refuses.
fn batch_of(n: usize) -> Vec<redcloud_meta::NewFile> {
    let mut files = Vec::new();
    for i in 0..n {
        let t: &[&str] = if i % 3 == 0 {
            &["all", "third"]
        } else {
            &["all"]
        };
        files.push((format!("f{i}"), version(i as u8, t), None));
        if i % 10 == 0 {
            files.push((format!("f{i}"), version(i as u8 ^ 0x80, &["again"]), None));
        }
    }
    files.insert(n / 2, ("bad/name".to_owned(), version(1, &["all"]), None));
    files
}

#[test]
fn a_batch_of_adds_ends_as_the_same_adds_one_by_one() {
    let n = 300;
    let files = batch_of(n);
    let mut batched = mem_store("n1", 4);
    let (answers, commits) = batched.add_versions("alice", files.clone(), T0);
    let mut single = mem_store("n2", 4);
    for ((name, v, after), answer) in files.into_iter().zip(&answers) {
        let one = single.add_version("alice", &name, v, T0, after);
        match (answer, one) {
            (Ok(file), Ok((head, _))) => {
                assert_eq!(file.name, name);
                assert_eq!((file.head.size, file.head.blake3), (head.size, head.blake3));
                assert_eq!(&file.head.chunks, &head.chunks);
                assert!(!file.conflicted, "{name} conflicts with itself");
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{name}: batched {a:?}, one by one {b:?}"),
        }
    }
    assert_eq!(answers.iter().filter(|a| a.is_err()).count(), 1);
    // Each answer is the file as its own version left it: the first of a name given twice
    // shows its first content, the second the second.
    assert_eq!(answers[0].as_ref().unwrap().head.blake3, [0; 32]);
    assert_eq!(answers[1].as_ref().unwrap().head.blake3, [0x80; 32]);

    for store in [&batched, &single] {
        assert_eq!(file_names(store, "alice", &["all"]).len(), n);
        assert_eq!(file_names(store, "alice", &["third"]).len(), n.div_ceil(3));
        assert_eq!(file_names(store, "alice", &["again"]).len(), n.div_ceil(10));
        assert_eq!(store.file_count().unwrap(), n);
        assert!(store.conflicts("alice").unwrap().is_empty());
    }
    for i in 0..n {
        let name = format!("f{i}");
        let (a, b) = (
            batched.history("alice", &name).unwrap(),
            single.history("alice", &name).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "versions of {name}");
        assert_eq!(a.len(), if i % 10 == 0 { 2 } else { 1 });
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.size, x.blake3, x.is_head), (y.size, y.blake3, y.is_head));
        }
        assert_eq!(
            batched.file("alice", &name).unwrap().unwrap().tags,
            single.file("alice", &name).unwrap().unwrap().tags
        );
    }
    assert_eq!(
        batched.live_chunks().unwrap(),
        single.live_chunks().unwrap()
    );

    // Fewer changes than files, each small enough to be gossiped, and together they carry
    // everything: a peer that applies them ends equal, and so does a restart.
    assert!(
        commits.len() < n / 4,
        "{} changes for {n} files",
        commits.len()
    );
    for c in &commits {
        assert!(
            c.changes.len() <= 64 << 10,
            "a change of {} bytes",
            c.changes.len()
        );
    }
    let mut peer = mem_store("n3", 4);
    for c in &commits {
        deliver(&mut peer, c, T0);
    }
    for doc in batched.docs() {
        if let redcloud_meta::DocId::Files(_) = doc {
            assert_eq!(batched.heads(doc).unwrap(), peer.heads(doc).unwrap());
        }
    }
    assert_eq!(
        batched.list("alice", &[]).unwrap(),
        peer.list("alice", &[]).unwrap()
    );
    for i in 0..n {
        let name = format!("f{i}");
        assert_eq!(
            batched.history("alice", &name).unwrap(),
            peer.history("alice", &name).unwrap()
        );
    }
}

#[test]
fn a_batch_of_adds_survives_a_restart() {
    let mut s = mem_store("n1", 4);
    let (answers, _) = s.add_versions("alice", batch_of(40), T0);
    // The last answer of each name is the file as the batch left it.
    let last: std::collections::BTreeMap<String, redcloud_meta::FileView> = answers
        .into_iter()
        .flatten()
        .map(|f| (f.name.clone(), f))
        .collect();
    assert_eq!(last.len(), 40);
    let s = reopen(s);
    for (name, file) in &last {
        assert_eq!(s.file("alice", name).unwrap().as_ref(), Some(file));
    }
    assert_eq!(s.file_count().unwrap(), 40);
}
