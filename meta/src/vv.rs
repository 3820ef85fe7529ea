//! Version vectors: which writes of which controller a version has seen.
//!
//! A version vector maps a node id to the number of versions that node has written (as far as
//! the writer knew). A new version's vector is the [`VersionVector::merge`] of every current
//! head candidate's vector, with the writer's own entry incremented, so it is causally
//! [`Causality::After`] everything its writer had seen.

use std::collections::BTreeMap;

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Every entry of `self` is <= the other's, at least one strictly: `self` happened before.
    Before,
    /// The mirror of `Before`: `self` has seen everything the other has, and more.
    After,
    Equal,
    /// Neither has seen all of the other.
    Concurrent,
}

/// A version vector; missing entries count as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<String, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `node` (0 when absent).
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Count one more version written by `node`.
    pub fn increment(&mut self, node: &str) {
        *self.0.entry(node.to_owned()).or_insert(0) += 1;
    }

    /// Pointwise maximum. Laws: commutative (`a ⊔ b = b ⊔ a`), associative
    /// (`(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`), idempotent (`a ⊔ a = a`), and the result compares
    /// `After` or `Equal` to both inputs.
    pub fn merge(&mut self, other: &VersionVector) {
        for (node, &n) in &other.0 {
            let e = self.0.entry(node.clone()).or_insert(0);
            *e = (*e).max(n);
        }
    }

    /// Causal order. Antisymmetric: `a.compare(b)` is `Before` exactly when `b.compare(a)` is
    /// `After`; `Equal` and `Concurrent` are symmetric.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        for node in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(node), other.get(node));
            less |= a < b;
            greater |= a > b;
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }
}

impl From<BTreeMap<String, u64>> for VersionVector {
    /// Zero entries are dropped, so equal vectors have equal representations.
    fn from(mut map: BTreeMap<String, u64>) -> Self {
        map.retain(|_, v| *v != 0);
        VersionVector(map)
    }
}

impl From<VersionVector> for BTreeMap<String, u64> {
    fn from(vv: VersionVector) -> Self {
        vv.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        VersionVector::from(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn compare_cases() {
        assert_eq!(vv(&[("a", 1)]).compare(&vv(&[("a", 1)])), Causality::Equal);
        assert_eq!(vv(&[]).compare(&vv(&[("a", 0)])), Causality::Equal);
        assert_eq!(vv(&[("a", 1)]).compare(&vv(&[("a", 2)])), Causality::Before);
        assert_eq!(
            vv(&[("a", 1), ("b", 1)]).compare(&vv(&[("a", 1)])),
            Causality::After
        );
        assert_eq!(
            vv(&[("a", 2)]).compare(&vv(&[("b", 1)])),
            Causality::Concurrent
        );
    }

    #[test]
    fn merge_then_increment_is_after_both() {
        let a = vv(&[("a", 2)]);
        let b = vv(&[("b", 1)]);
        let mut m = a.clone();
        m.merge(&b);
        m.increment("c");
        assert_eq!(m, vv(&[("a", 2), ("b", 1), ("c", 1)]));
        assert_eq!(m.compare(&a), Causality::After);
        assert_eq!(m.compare(&b), Causality::After);
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map("[abcd]", 0u64..4, 0..4).prop_map(VersionVector::from)
    }

    fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn merge_laws(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let m = merged(&a, &b);
            prop_assert!(matches!(m.compare(&a), Causality::After | Causality::Equal));
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            let expected = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), expected);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }
    }
}
