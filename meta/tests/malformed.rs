//! Hostile input: random, truncated and corrupted bytes fed to the replication hooks return
//! errors, never panic, and leave the replica usable.

mod common;

use common::*;
use proptest::prelude::*;
use redcloud_meta::{DocId, MetaError, MetaStore};

fn setup() -> (MetaStore, MetaStore, Vec<redcloud_meta::Commit>) {
    let mut a = mem_store("node-a", 2);
    let b = mem_store("node-b", 2);
    let mut commits = Vec::new();
    for i in 0..3u8 {
        commits.push(
            a.add_version("alice", "f", version(i, &["t"]), T0 + u64::from(i), None)
                .unwrap()
                .1,
        );
    }
    (a, b, commits)
}

/// After hostile input, `b` still applies good commits and syncs to convergence with `a`.
fn still_usable(a: &mut MetaStore, b: &mut MetaStore, commits: &[redcloud_meta::Commit]) {
    for c in commits {
        b.apply_changes(c.doc, &c.changes, T0).unwrap();
    }
    b.reset_peer("node-a");
    a.reset_peer("node-b");
    sync_pair(a, b, T0);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(b.history("alice", "f").unwrap().len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 1..400), doc in 0u32..3) {
        let (mut a, mut b, commits) = setup();
        let doc = if doc == 2 { DocId::Cluster } else { DocId::Files(doc) };
        let r = b.apply_changes(doc, &bytes, T0);
        prop_assert!(matches!(r, Err(MetaError::MalformedChanges { .. })), "{r:?}");
        let _ = b.receive_sync_message(doc, "node-a", &bytes, T0);
        still_usable(&mut a, &mut b, &commits);
    }

    #[test]
    fn truncated_or_flipped_changes(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut a, mut b, commits) = setup();
        let c = &commits[0];
        let truncated = &c.changes[..cut.index(c.changes.len())];
        if !truncated.is_empty() {
            prop_assert!(b.apply_changes(c.doc, truncated, T0).is_err());
        }
        let mut flipped = c.changes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 1 << bit;
        prop_assert!(b.apply_changes(c.doc, &flipped, T0).is_err(), "flipped byte {i} accepted");
        still_usable(&mut a, &mut b, &commits);
    }

    #[test]
    fn truncated_or_flipped_sync_messages(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut a, mut b, commits) = setup();
        let doc = commits[0].doc;
        // A real first message from a (it carries no changes yet), and a later one that does.
        let m1 = a.generate_sync_message(doc, "node-b").unwrap().unwrap();
        let truncated = &m1[..cut.index(m1.len())];
        let _ = b.receive_sync_message(doc, "node-a", truncated, T0);
        let mut flipped = m1.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 1 << bit;
        let _ = b.receive_sync_message(doc, "node-a", &flipped, T0);
        still_usable(&mut a, &mut b, &commits);
    }
}

#[test]
fn oversized_input_is_refused() {
    let (_, mut b, _) = setup();
    let big = vec![0u8; (16 << 20) + 1];
    let e = b.apply_changes(DocId::Cluster, &big, T0).unwrap_err();
    assert!(matches!(e, MetaError::TooLarge { .. }), "{e}");
    let e = b
        .receive_sync_message(DocId::Cluster, "p", &big, T0)
        .unwrap_err();
    assert!(matches!(e, MetaError::TooLarge { .. }), "{e}");
    assert!(matches!(
        b.apply_changes(DocId::Files(99), &[], T0),
        Err(MetaError::UnknownDocument(_))
    ));
}

#[test]
fn empty_sync_message_garbage_is_an_error() {
    let (_, mut b, _) = setup();
    let e = b
        .receive_sync_message(DocId::Files(0), "p", &[0x42], T0)
        .unwrap_err();
    assert!(e.to_string().contains("files/0"), "{e}");
}
