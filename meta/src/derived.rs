//! State derived from the file documents and cached per document, so that reads which would
//! otherwise visit every file visit only what they need: which files carry a tag (`list
//! TAG`), and how many files are live or in conflict (`status`).
//!
//! Everything here is in memory only. Each document's entry remembers the document heads it
//! was computed at; a read first compares them with the document's current heads and, if any
//! change arrived since (a local write or one replicated from a peer, whatever path it took),
//! recomputes that document's entry. So nothing here is ever stale, and an unchanged document
//! costs a heads comparison. A write changes one document of `shards`, so the next read after
//! it recomputes one shard's entry, not the whole store's.

use std::collections::{BTreeSet, HashMap};

use automerge::{ChangeHash, ReadDoc};
use parking_lot::Mutex;

use crate::document::{DocId, Document};
use crate::error::MetaError;
use crate::names::{SEP, prefix_range};

/// A value computed from one document, per document, valid at the heads it was computed at.
#[derive(Debug)]
struct PerDoc<T> {
    entries: Mutex<HashMap<DocId, (Vec<ChangeHash>, T)>>,
}

impl<T> Default for PerDoc<T> {
    fn default() -> Self {
        PerDoc {
            entries: Mutex::default(),
        }
    }
}

impl<T> PerDoc<T> {
    /// Runs `read` on `doc`'s value, computing it first with `compute` if there is none or
    /// `doc` changed since.
    fn read<R>(
        &self,
        doc: &Document,
        compute: impl FnOnce(&Document) -> Result<T, MetaError>,
        read: impl FnOnce(&T) -> R,
    ) -> Result<R, MetaError> {
        let heads = doc.am.get_heads();
        let mut entries = self.entries.lock();
        let fresh = entries.get(&doc.id).is_some_and(|(at, _)| *at == heads);
        if !fresh {
            let value = compute(doc)?;
            entries.insert(doc.id, (heads, value));
        }
        let (_, value) = entries.get(&doc.id).expect("inserted above");
        Ok(read(value))
    }
}

/// Live and conflicted files of one document.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Files whose head is not a tombstone.
    pub live: usize,
    /// Files with two or more head candidates, per owner.
    pub conflicted: HashMap<String, usize>,
}

/// The derived state of a store's file documents.
#[derive(Debug, Default)]
pub struct Derived {
    /// `owner\x1ftag\x1fname` for every tag of every file: the files of one (owner, tag) are
    /// one ordered range. (The `tags` map's keys are `owner\x1fname\x1ftag`.)
    tags: PerDoc<BTreeSet<String>>,
    counts: PerDoc<FileCounts>,
}

impl Derived {
    /// Names of the files of `owner` that carry `tag` in `doc`, in name order. Files whose
    /// head is deleted or purged may be among them: the caller reads each file's state.
    pub(crate) fn files_with(
        &self,
        doc: &Document,
        owner: &str,
        tag: &str,
    ) -> Result<Vec<String>, MetaError> {
        let prefix = format!("{owner}{SEP}{tag}");
        let skip = prefix.len() + SEP.len_utf8();
        self.tags.read(
            doc,
            |doc| Ok(tag_keys(doc)),
            |keys| {
                keys.range(prefix_range(&prefix))
                    .map(|k| k[skip..].to_owned())
                    .collect()
            },
        )
    }

    /// `read` of `doc`'s file counts, computing them with `count` when `doc` changed.
    pub(crate) fn counts<R>(
        &self,
        doc: &Document,
        count: impl FnOnce(&Document) -> Result<FileCounts, MetaError>,
        read: impl FnOnce(&FileCounts) -> R,
    ) -> Result<R, MetaError> {
        self.counts.read(doc, count, read)
    }
}

/// The index keys of every tag in `doc`'s `tags` map.
fn tag_keys(doc: &Document) -> BTreeSet<String> {
    doc.am
        .map_range(doc.map("tags"), ..)
        .filter_map(|item| index_key(&item.key))
        .collect()
}

/// `owner\x1fname\x1ftag` -> `owner\x1ftag\x1fname`; `None` for a key without both separators.
fn index_key(tag_key: &str) -> Option<String> {
    let (owner, rest) = tag_key.split_once(SEP)?;
    let (name, tag) = rest.rsplit_once(SEP)?;
    Some(format!("{owner}{SEP}{tag}{SEP}{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{file_key, sub_key};

    #[test]
    fn index_keys_group_files_by_owner_and_tag() {
        let key = sub_key(&file_key("ann", "report.pdf"), "work");
        assert_eq!(
            index_key(&key).unwrap(),
            format!("ann{SEP}work{SEP}report.pdf")
        );
        assert_eq!(index_key("no separators"), None);
        assert_eq!(index_key(&format!("ann{SEP}only-one")), None);
    }
}
