//! Anti-entropy never wedges: one anti-entropy session between two diverged controllers, with
//! the message at each position lost in turn (requests and answers alike), is followed by a
//! clean session that converges them. Before sync state was reset at session start and on
//! failure, a lost message left Automerge waiting for an answer that never came, and the
//! peers stayed apart until the connection dropped.

mod common;

use common::*;
use redcloud_meta::MetaStore;

const LIMIT: usize = 16 << 20;

/// Two replicas that each hold writes the other lacks, in several documents.
fn diverged() -> (MetaStore, MetaStore) {
    let mut a = mem_store("node-a", 4);
    let mut b = mem_store("node-b", 4);
    a.register_user("alice", "pw", T0).unwrap();
    b.register_user("bob", "pw", T0).unwrap();
    for i in 0..6u8 {
        a.add_version(
            "alice",
            &format!("a{i}"),
            version(i, &["x"]),
            T0 + u64::from(i),
            None,
        )
        .unwrap();
        b.add_version(
            "bob",
            &format!("b{i}"),
            version(i + 50, &["y"]),
            T0 + u64::from(i),
            None,
        )
        .unwrap();
    }
    (a, b)
}

#[test]
fn a_lost_message_at_any_position_does_not_wedge_the_next_session() {
    // How many messages a clean session takes.
    let (mut a, mut b) = diverged();
    let (end, total) = session(&mut a, &mut b, None, LIMIT, T0);
    assert_eq!(end, SessionEnd::Done { equal: false });
    assert_eq!(a.digest(), b.digest(), "one clean session converges");
    assert!(total >= 4, "a session of {total} messages");

    for lost in 0..total {
        let (mut a, mut b) = diverged();
        let (end, sent) = session(&mut a, &mut b, Some(lost), LIMIT, T0);
        if end != SessionEnd::Aborted {
            // Fresh replicas get fresh actor ids, so Automerge's bloom filters may settle in
            // fewer rounds than the first run took: this session ended before message `lost`.
            assert!(
                sent <= lost,
                "message {lost} was lost, yet the session ended {end:?}"
            );
            assert_eq!(a.digest(), b.digest(), "a complete session converges");
            continue;
        }
        // The next session, in either direction, completes the exchange.
        let (first, second) = if lost % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let (end, _) = session(first, second, None, LIMIT, T0);
        assert!(
            matches!(end, SessionEnd::Done { .. }),
            "after losing message {lost}, the next session ended {end:?}"
        );
        assert_eq!(
            a.digest(),
            b.digest(),
            "after losing message {lost} of {total}, the next session did not converge"
        );
        assert_converged(&[a, b], &["alice", "bob"], &["a0", "a5", "b0", "b5"]);
    }
}

#[test]
fn repeated_losses_then_quiet_converges() {
    let (mut a, mut b) = diverged();
    // Lose a message in each of several sessions, at different positions.
    for lost in [1, 3, 2, 5, 0] {
        let _ = session(&mut a, &mut b, Some(lost), LIMIT, T0);
        let _ = session(&mut b, &mut a, Some(lost + 1), LIMIT, T0);
    }
    let n = sessions_until_equal(&mut a, &mut b, LIMIT, T0, 3);
    assert!(n <= 2, "equal after {n} clean sessions");
    assert_converged(&[a, b], &["alice", "bob"], &["a0", "b0"]);
}
