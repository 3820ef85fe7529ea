//! The winner rule among a file's head candidates (pure).
//!
//! Concurrent writes leave several head candidates (an Automerge conflict on the file's
//! `heads` entry). Every replica must pick the same winner from the same set:
//!
//! 1. A candidate whose version vector is causally *before* another candidate's loses to it.
//! 2. Among the remaining (pairwise concurrent or equal) candidates, the one with the highest
//!    HLC `created` timestamp wins; then the highest origin node id (byte-wise string order);
//!    then the highest version id (only two incarnations sharing a node id and a clock can get
//!    that far).
//!
//! The result depends only on the *set* of candidates, never on their order: step 1 keeps the
//! candidates no other candidate dominates (a set defined without order; never empty, since
//! causal order has no cycles), and step 2 takes the maximum of a total order on distinct
//! version ids.

use crate::hlc::Timestamp;
use crate::vv::{Causality, VersionVector};

/// What the rule needs to know about one head candidate.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub vid: &'a str,
    pub vv: &'a VersionVector,
    pub created: Timestamp,
    pub origin: &'a str,
}

/// The index of the winning candidate, or `None` for an empty slice.
pub fn winner(candidates: &[Candidate<'_>]) -> Option<usize> {
    let dominated = |c: &Candidate<'_>| {
        candidates
            .iter()
            .any(|other| c.vv.compare(other.vv) == Causality::Before)
    };
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !dominated(c))
        .max_by(|(_, a), (_, b)| (a.created, a.origin, a.vid).cmp(&(b.created, b.origin, b.vid)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        VersionVector::from(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn causally_later_beats_concurrent_higher_hlc() {
        let old = vv(&[("a", 1)]);
        let newer = vv(&[("a", 1), ("b", 1)]);
        let c = [
            Candidate {
                vid: "x",
                vv: &old,
                created: Timestamp(900),
                origin: "a",
            },
            Candidate {
                vid: "y",
                vv: &newer,
                created: Timestamp(100),
                origin: "b",
            },
        ];
        assert_eq!(winner(&c), Some(1));
    }

    #[test]
    fn concurrent_higher_hlc_wins_then_origin_then_vid() {
        let a = vv(&[("a", 1)]);
        let b = vv(&[("b", 1)]);
        let hlc = [
            Candidate {
                vid: "x",
                vv: &a,
                created: Timestamp(200),
                origin: "a",
            },
            Candidate {
                vid: "y",
                vv: &b,
                created: Timestamp(100),
                origin: "b",
            },
        ];
        assert_eq!(winner(&hlc), Some(0));
        let tie = [
            Candidate {
                vid: "x",
                vv: &a,
                created: Timestamp(100),
                origin: "a",
            },
            Candidate {
                vid: "y",
                vv: &b,
                created: Timestamp(100),
                origin: "b",
            },
        ];
        assert_eq!(winner(&tie), Some(1));
        let same_origin = [
            Candidate {
                vid: "y",
                vv: &a,
                created: Timestamp(100),
                origin: "a",
            },
            Candidate {
                vid: "x",
                vv: &a,
                created: Timestamp(100),
                origin: "a",
            },
        ];
        assert_eq!(winner(&same_origin), Some(0));
        assert_eq!(winner(&[]), None);
    }

    #[derive(Clone, Debug)]
    struct Owned {
        vid: String,
        vv: VersionVector,
        created: u64,
        origin: String,
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Owned>> {
        proptest::collection::vec(
            (
                proptest::collection::btree_map("[abc]", 0u64..3, 0..3),
                0u64..4,
                "[abc]",
            ),
            1..6,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (vv, created, origin))| Owned {
                    vid: format!("v{i}"),
                    vv: VersionVector::from(vv),
                    created,
                    origin,
                })
                .collect()
        })
    }

    fn pick(cands: &[Owned]) -> String {
        let view: Vec<_> = cands
            .iter()
            .map(|c| Candidate {
                vid: &c.vid,
                vv: &c.vv,
                created: Timestamp(c.created),
                origin: &c.origin,
            })
            .collect();
        cands[winner(&view).unwrap()].vid.clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn winner_is_independent_of_order(
            cands in arb_candidates(),
            perm in proptest::collection::vec(any::<prop::sample::Index>(), 6),
        ) {
            let mut shuffled = cands.clone();
            for (i, ix) in perm.iter().enumerate().take(shuffled.len()) {
                let j = ix.index(shuffled.len());
                shuffled.swap(i, j);
            }
            let w = pick(&cands);
            prop_assert_eq!(&w, &pick(&shuffled));
            // The winner is never causally before another candidate.
            let wc = cands.iter().find(|c| c.vid == w).unwrap();
            prop_assert!(cands.iter().all(|c| wc.vv.compare(&c.vv) != Causality::Before));
        }
    }
}
