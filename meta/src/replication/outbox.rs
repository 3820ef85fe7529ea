//! Local commits into gossip messages, and gossip messages back into per-document parts.
//!
//! The metadata owner makes a group of commits durable with one sync and hands them to the
//! replication task together. Publishing each alone costs a signature, an envelope and, on
//! every peer, a signature check, a validation and an apply per commit. [`pack`] puts the
//! commits that are waiting into as few messages as fit the gossip limit: one part per
//! document, its commits' changes concatenated in commit order and the heads after the last.
//! A commit too large for any message is announced by its heads instead (peers missing them
//! pull by sync), as before. [`unpack`] is the receiving side's parse: every part names a
//! known document, and no message holds more than [`MAX_PARTS`] parts.
//!
//! Pure functions: the replication task does the IO.

use automerge::ChangeHash;

use super::wire::{DocChanges, Gossip};
use crate::document::DocId;
use crate::store::Commit;

/// Most document parts in one message; a receiver rejects a message with more.
pub const MAX_PARTS: usize = 256;

/// Upper bound of one field's key and length prefix (a 1-byte key, a varint of at most 5 bytes).
const FIELD_FRAMING: usize = 6;

/// What [`pack`] made of a run of commits.
#[derive(Debug, Default)]
pub struct Packed {
    /// The messages to publish, in order.
    pub messages: Vec<Gossip>,
    /// Commits sent as heads only, being too large for a message.
    pub announcements: usize,
}

/// Packs `commits` (in commit order) into messages whose encoded size is at most `limit`.
pub fn pack(commits: impl IntoIterator<Item = Commit>, limit: usize) -> Packed {
    let mut packed = Packed::default();
    let mut parts: Vec<DocChanges> = Vec::new();
    let mut size = 0;
    for commit in commits {
        let mut part = DocChanges {
            doc: commit.doc.to_string(),
            changes: commit.changes,
            heads: commit.heads.iter().map(|h| h.0.to_vec()).collect(),
        };
        let mut cost = part_size(&part.doc, part.changes.len(), &part.heads);
        if cost > limit {
            part.changes = Vec::new();
            cost = part_size(&part.doc, 0, &part.heads);
            packed.announcements += 1;
        }
        // The same document's last part of this message takes the changes, if they still
        // fit (not an announcement's: the heads a receiver sees last stay the newest).
        let same = parts
            .iter()
            .rposition(|p| p.doc == part.doc)
            .filter(|&i| !parts[i].changes.is_empty() && !part.changes.is_empty());
        if let Some(i) = same {
            let old = &parts[i];
            let grown = size - part_size(&old.doc, old.changes.len(), &old.heads)
                + part_size(
                    &part.doc,
                    old.changes.len() + part.changes.len(),
                    &part.heads,
                );
            if grown <= limit {
                let old = &mut parts[i];
                old.changes.extend_from_slice(&part.changes);
                old.heads = part.heads;
                size = grown;
                continue;
            }
        }
        if !parts.is_empty() && (size + cost > limit || parts.len() == MAX_PARTS) {
            packed.messages.push(message(std::mem::take(&mut parts)));
            size = 0;
        }
        size += cost;
        parts.push(part);
    }
    if !parts.is_empty() {
        packed.messages.push(message(parts));
    }
    packed
}

/// The parts of a received message, each with its document; an error names what is wrong.
pub fn unpack(msg: Gossip) -> Result<Vec<(DocId, DocChanges)>, String> {
    let Gossip {
        doc,
        changes,
        heads,
        more,
    } = msg;
    if more.len() >= MAX_PARTS {
        return Err(format!(
            "{} document parts, more than the {MAX_PARTS} allowed",
            more.len() + 1
        ));
    }
    let first = DocChanges {
        doc,
        changes,
        heads,
    };
    std::iter::once(first)
        .chain(more)
        .map(|part| match part.doc.parse::<DocId>() {
            Ok(doc) => Ok((doc, part)),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// Whether `announced` names a head that is not among `ours` (a malformed one counts as
/// missing): the receiver then pulls the document by sync.
pub fn lacks_any(ours: &[ChangeHash], announced: &[Vec<u8>]) -> bool {
    announced
        .iter()
        .any(|h| !ours.iter().any(|o| o.0[..] == h[..]))
}

/// A message of `parts`: the first in the fields every controller reads, the rest in `more`.
fn message(parts: Vec<DocChanges>) -> Gossip {
    let mut parts = parts.into_iter();
    let first = parts.next().unwrap_or_default();
    Gossip {
        doc: first.doc,
        changes: first.changes,
        heads: first.heads,
        more: parts.collect(),
    }
}

/// An upper bound of a part's encoded size inside a message (its own key and length prefix
/// included): the first part, written as the message's own fields, costs less.
fn part_size(doc: &str, changes: usize, heads: &[Vec<u8>]) -> usize {
    let fields = FIELD_FRAMING + doc.len() + FIELD_FRAMING + changes;
    let heads: usize = heads.iter().map(|h| FIELD_FRAMING + h.len()).sum();
    FIELD_FRAMING + fields + heads
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn commit(doc: u32, changes: Vec<u8>, head: u8) -> Commit {
        Commit {
            doc: if doc == 0 {
                DocId::Cluster
            } else {
                DocId::Files(doc - 1)
            },
            changes,
            heads: vec![ChangeHash([head; 32])],
        }
    }

    #[test]
    fn commits_waiting_together_leave_in_one_message() {
        let commits: Vec<Commit> = (0..16)
            .map(|i| commit(i % 5, vec![i as u8; 100], i as u8))
            .collect();
        let packed = pack(commits, 64 << 10);
        assert_eq!(packed.messages.len(), 1);
        assert_eq!(packed.announcements, 0);
        let parts = unpack(packed.messages[0].clone()).expect("parses");
        // One part per document, its commits' changes in order, the heads after the last.
        assert_eq!(parts.len(), 5);
        let (doc, part) = &parts[1];
        assert_eq!(*doc, DocId::Files(0));
        let expected: Vec<u8> = [1u8, 6, 11].iter().flat_map(|&i| vec![i; 100]).collect();
        assert_eq!(part.changes, expected);
        assert_eq!(part.heads, vec![vec![11u8; 32]]);
    }

    #[test]
    fn a_commit_too_large_for_a_message_is_announced_by_its_heads() {
        let commits = vec![
            commit(1, vec![1; 10], 1),
            commit(2, vec![2; 70_000], 2),
            commit(1, vec![3; 10], 3),
        ];
        let packed = pack(commits, 64 << 10);
        assert_eq!(packed.announcements, 1);
        let parts: Vec<_> = packed
            .messages
            .into_iter()
            .flat_map(|m| unpack(m).expect("parses"))
            .collect();
        let big = parts
            .iter()
            .find(|(d, _)| *d == DocId::Files(1))
            .expect("announced");
        assert!(big.1.changes.is_empty());
        assert_eq!(big.1.heads, vec![vec![2u8; 32]]);
    }

    #[test]
    fn an_announcement_is_pulled_only_for_heads_we_lack() {
        let ours = [ChangeHash([1; 32]), ChangeHash([2; 32])];
        assert!(!lacks_any(&ours, &[vec![2; 32]]));
        assert!(!lacks_any(&ours, &[]));
        assert!(lacks_any(&ours, &[vec![1; 32], vec![3; 32]]));
        assert!(
            lacks_any(&ours, &[vec![1; 31]]),
            "a malformed head counts as missing"
        );
        assert!(lacks_any(&[], &[vec![1; 32]]));
    }

    #[test]
    fn a_message_of_an_older_controller_is_one_part() {
        let old = Gossip {
            doc: "files/3".into(),
            changes: vec![1, 2, 3],
            heads: vec![vec![7; 32]],
            more: Vec::new(),
        };
        let parts = unpack(old).expect("parses");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, DocId::Files(3));
        assert_eq!(parts[0].1.changes, vec![1, 2, 3]);
    }

    #[test]
    fn unknown_documents_and_too_many_parts_are_errors() {
        let part = |doc: &str| DocChanges {
            doc: doc.into(),
            changes: vec![1],
            heads: Vec::new(),
        };
        let bad = Gossip {
            doc: "files/1".into(),
            more: vec![part("files/2"), part("nonsense")],
            ..Gossip::default()
        };
        assert!(unpack(bad).unwrap_err().contains("nonsense"));
        let many = Gossip {
            doc: "files/1".into(),
            more: (0..MAX_PARTS).map(|_| part("files/2")).collect(),
            ..Gossip::default()
        };
        assert!(unpack(many).unwrap_err().contains("allowed"));
        assert!(unpack(Gossip::default()).is_err(), "no document at all");
    }

    proptest! {
        /// Whatever the commits, every message fits the limit and holds at most MAX_PARTS
        /// parts, and per document the parts carry exactly the commits' changes, in order
        /// (oversized commits as heads only), ending with the last commit's heads.
        #[test]
        fn packing_keeps_every_change_in_order_within_the_limit(
            commits in proptest::collection::vec((0u32..6, 0usize..3_000), 0..400),
            limit in 2_000usize..20_000,
        ) {
            let input: Vec<Commit> = commits
                .iter()
                .enumerate()
                .map(|(i, &(doc, len))| commit(doc, vec![i as u8; len], i as u8))
                .collect();
            let packed = pack(input.clone(), limit);
            let mut got: std::collections::HashMap<DocId, (Vec<u8>, Vec<Vec<u8>>)> =
                Default::default();
            for m in packed.messages {
                prop_assert!(m.encoded_len() <= limit, "{} > {limit}", m.encoded_len());
                prop_assert!(m.more.len() < MAX_PARTS);
                for (doc, part) in unpack(m).expect("parses") {
                    let e = got.entry(doc).or_default();
                    e.0.extend_from_slice(&part.changes);
                    e.1 = part.heads;
                }
            }
            let mut want: std::collections::HashMap<DocId, (Vec<u8>, Vec<Vec<u8>>)> =
                Default::default();
            let mut announced = 0;
            for c in input {
                let e = want.entry(c.doc).or_default();
                if part_size(&c.doc.to_string(), c.changes.len(), &[vec![0; 32]]) <= limit {
                    e.0.extend_from_slice(&c.changes);
                } else {
                    announced += 1;
                }
                e.1 = c.heads.iter().map(|h| h.0.to_vec()).collect();
            }
            prop_assert_eq!(packed.announcements, announced);
            prop_assert_eq!(got, want);
        }
    }
}
