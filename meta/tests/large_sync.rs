//! Any difference syncs: a document holding more than 64 MiB of changes that the other side
//! lacks (a late joiner, a long partition) converges under the 16 MiB message cap, whichever
//! side starts the session, with every message under the cap.

mod common;

use common::*;
use redcloud_meta::{MetaStore, NewVersion};

const LIMIT: usize = 16 << 20;
/// Chunks per version: each version's change carries this many 32-byte random ids.
const CHUNKS: usize = 1024;

/// A replica with one user and more than `bytes` of changes in its one files document.
fn big(node: &str, bytes: usize) -> (MetaStore, usize) {
    let mut s = mem_store(node, 1);
    s.register_user("alice", "pw", T0).unwrap();
    let mut total = 0usize;
    let mut n = 0u64;
    while total < bytes {
        let chunks = (0..CHUNKS as u64)
            .map(|i| {
                let id = *blake3::hash(&(n * CHUNKS as u64 + i).to_le_bytes()).as_bytes();
                (id, 1 << 20)
            })
            .collect::<Vec<_>>();
        let v = NewVersion {
            size: (CHUNKS as u64) << 20,
            blake3: *blake3::hash(&n.to_be_bytes()).as_bytes(),
            chunks,
            tags: vec!["t".into()],
        };
        let (_, commit) = s
            .add_version("alice", &format!("f{}", n % 97), v, T0 + n, None)
            .unwrap();
        total += commit.changes.len();
        n += 1;
    }
    (s, total)
}

#[test]
fn sixty_four_mib_of_changes_converge_under_the_cap_both_ways() {
    let (mut full, bytes) = big("node-full", 64 << 20);
    assert!(bytes >= 64 << 20, "{bytes} bytes of changes");
    eprintln!("{} MiB of changes in one document", bytes >> 20);

    // The empty side starts (it pulls).
    let mut empty = mem_store("node-new", 1);
    let n = sessions_until_equal(&mut empty, &mut full, LIMIT, T0, 3);
    eprintln!("pull: equal after {n} session(s)");
    assert_converged(&[full, empty], &["alice"], &["f0", "f96"]);

    // The full side starts (it pushes).
    let (mut full, _) = big("node-full", 64 << 20);
    let mut empty = mem_store("node-new", 1);
    let n = sessions_until_equal(&mut full, &mut empty, LIMIT, T0, 3);
    eprintln!("push: equal after {n} session(s)");
    assert_converged(&[full, empty], &["alice"], &["f0", "f96"]);
}
