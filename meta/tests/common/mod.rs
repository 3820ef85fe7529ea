//! Helpers shared by the integration tests: cheap configs, replicas, sync and convergence
//! checks.
#![allow(dead_code)]

use redcloud_meta::{
    Commit, Config, DocStorage, MemStorage, MetaStore, NewVersion, NodeId, PasswordCost,
};

/// Test wall clock origin (2023-11-14).
pub const T0: u64 = 1_700_000_000_000;

pub fn config(node: &str, shards: u32) -> Config {
    let mut c = Config::new(NodeId::new(node).unwrap());
    c.shards = shards;
    // Cheap hashes keep property tests fast; production uses the argon2 defaults.
    c.password_cost = PasswordCost {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    c
}

pub fn mem_store(node: &str, shards: u32) -> MetaStore {
    MetaStore::open(Box::new(MemStorage::new()), config(node, shards)).unwrap()
}

pub fn reopen(store: MetaStore) -> MetaStore {
    let config = store_config(&store);
    let storage: Box<dyn DocStorage> = store.into_storage();
    MetaStore::open(storage, config).unwrap()
}

pub fn store_config(store: &MetaStore) -> Config {
    config(store.node_id().as_str(), store.shards())
}

/// A version whose content is derived from `seed`.
pub fn version(seed: u8, tags: &[&str]) -> NewVersion {
    NewVersion {
        size: 300 + u64::from(seed),
        blake3: [seed; 32],
        chunks: vec![
            ([seed; 32], 100),
            ([seed.wrapping_add(100); 32], 200 + u64::from(seed)),
        ],
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

pub fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

pub fn deliver(to: &mut MetaStore, commit: &Commit, wall_ms: u64) {
    to.apply_changes(commit.doc, &commit.changes, wall_ms)
        .unwrap();
}

/// Run the sync protocol between `a` and `b` on every document until neither has a message.
pub fn sync_pair(a: &mut MetaStore, b: &mut MetaStore, wall_ms: u64) {
    let (an, bn) = (a.node_id().to_string(), b.node_id().to_string());
    for doc in a.docs() {
        // As every production session does: a message lost earlier (LossySession) must not
        // leave either side waiting for an answer that will never come.
        a.reset_sync(doc, &bn);
        b.reset_sync(doc, &an);
        let mut quiet = false;
        for _ in 0..64 {
            let m1 = a.generate_sync_message(doc, &bn).unwrap();
            if let Some(m) = &m1 {
                b.receive_sync_message(doc, &an, m, wall_ms).unwrap();
            }
            let m2 = b.generate_sync_message(doc, &an).unwrap();
            if let Some(m) = &m2 {
                a.receive_sync_message(doc, &bn, m, wall_ms).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                quiet = true;
                break;
            }
        }
        assert!(
            quiet,
            "sync of {doc} between {an} and {bn} did not settle in 64 rounds"
        );
    }
}

/// Full pairwise sync until every replica has the same digest (bounded rounds).
pub fn sync_all(replicas: &mut [MetaStore], wall_ms: u64) {
    for _round in 0..4 {
        for i in 0..replicas.len() {
            for j in (i + 1)..replicas.len() {
                let (left, right) = replicas.split_at_mut(j);
                sync_pair(&mut left[i], &mut right[0], wall_ms);
            }
        }
        let d = replicas[0].digest();
        if replicas.iter().all(|r| r.digest() == d) {
            return;
        }
    }
    panic!("replicas did not converge after 4 rounds of full pairwise sync");
}

/// Every replica shows the same heads, digest and materialized state.
pub fn assert_converged(replicas: &[MetaStore], owners: &[&str], names: &[&str]) {
    let first = &replicas[0];
    for r in &replicas[1..] {
        for doc in first.docs() {
            assert_eq!(
                first.heads(doc).unwrap(),
                r.heads(doc).unwrap(),
                "heads of {doc}"
            );
        }
        assert_eq!(first.digest(), r.digest());
        assert_eq!(first.users().unwrap(), r.users().unwrap());
        assert_eq!(first.live_chunks().unwrap(), r.live_chunks().unwrap());
        assert_eq!(first.file_count().unwrap(), r.file_count().unwrap());
        assert_eq!(first.secrets().unwrap(), r.secrets().unwrap());
        assert_eq!(first.chunkservers().unwrap(), r.chunkservers().unwrap());
        for owner in owners {
            assert_eq!(first.list(owner, &[]).unwrap(), r.list(owner, &[]).unwrap());
            assert_eq!(first.conflicts(owner).unwrap(), r.conflicts(owner).unwrap());
            for name in names {
                assert_eq!(
                    first.history(owner, name).unwrap(),
                    r.history(owner, name).unwrap(),
                    "history of {owner}/{name}"
                );
                assert_eq!(
                    first.file(owner, name).unwrap(),
                    r.file(owner, name).unwrap()
                );
            }
        }
    }
}

/// How one anti-entropy session over the in-memory link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The session finished; `equal`: the peers were already in sync when it started.
    Done { equal: bool },
    /// A message was lost (or an answer refused): the initiator aborted, as the replication
    /// task does on a timeout.
    Aborted,
}

/// Runs one production anti-entropy session (`replication::session`) from `a` to `b` over an
/// in-memory link that loses message number `drop` (requests and answers counted together,
/// from 0), with `limit` as both sides' message cap. Returns how it ended and the number of
/// messages that crossed the link.
pub fn session(
    a: &mut MetaStore,
    b: &mut MetaStore,
    drop: Option<usize>,
    limit: usize,
    wall_ms: u64,
) -> (SessionEnd, usize) {
    use redcloud_meta::replication::session::{Session, Step, answer};
    let (an, bn) = (a.node_id().to_string(), b.node_id().to_string());
    let (mut s, mut step) = Session::start(a, &bn, None, wall_ms, limit);
    let mut sent = 0usize;
    // Bounded: every document gets at most MAX_SYNC_ROUNDS rounds plus its batches.
    for _ in 0..100_000 {
        let request = match step {
            Step::Done { equal } => return (SessionEnd::Done { equal }, sent),
            Step::Send(r) => r,
        };
        let lost = drop == Some(sent);
        sent += 1;
        if lost {
            s.abort(a);
            return (SessionEnd::Aborted, sent);
        }
        let (response, _) = answer(b, &an, request.request, wall_ms, limit);
        let lost = drop == Some(sent);
        sent += 1;
        if lost {
            s.abort(a);
            return (SessionEnd::Aborted, sent);
        }
        let encoded = redcloud_meta::replication::wire::encode(&response);
        assert!(
            encoded.len() <= limit + (64 << 10),
            "an answer of {} bytes exceeds the cap of {limit}",
            encoded.len()
        );
        step = match s.on_response(a, response, wall_ms) {
            Ok(next) => next,
            Err(_) => {
                s.abort(a);
                return (SessionEnd::Aborted, sent);
            }
        };
    }
    panic!("a session from {an} to {bn} did not end in 100000 messages");
}

/// Sessions from `a` to `b` until one finds them equal (at most `max`). Returns the number of
/// sessions run.
pub fn sessions_until_equal(
    a: &mut MetaStore,
    b: &mut MetaStore,
    limit: usize,
    wall_ms: u64,
    max: usize,
) -> usize {
    for n in 1..=max {
        if let (SessionEnd::Done { equal: true }, _) = session(a, b, None, limit, wall_ms) {
            return n;
        }
    }
    panic!(
        "{} and {} not equal after {max} sessions",
        a.node_id(),
        b.node_id()
    );
}
