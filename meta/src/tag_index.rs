//! Which files carry a tag, per file document: `list TAG` reads the files that carry the tag
//! instead of every file of the owner.
//!
//! The index is derived and in memory only. Each document's part remembers the document heads
//! it was built at; a lookup first compares them with the document's current heads and, if any
//! change arrived since (a local write or one replicated from a peer, whatever path it took),
//! rebuilds that part from the document's `tags` map. So the index is never stale, and an
//! unchanged document costs a heads comparison and a range read. A write dirties one document
//! of `shards`, so the next lookup after it rereads one shard's tags, not the whole store.
//!
//! Keys of the `tags` map are `owner\x1fname\x1ftag` ([`crate::names`]); the index holds
//! `owner\x1ftag\x1fname`, so the files of one (owner, tag) are one ordered range.

use std::collections::{BTreeSet, HashMap};

use automerge::{ChangeHash, ReadDoc};
use parking_lot::Mutex;

use crate::document::{DocId, Document};
use crate::names::{SEP, prefix_range};

/// The per-document tag indexes of a store.
#[derive(Debug, Default)]
pub struct TagIndex {
    parts: Mutex<HashMap<DocId, Part>>,
}

/// One document's index, valid at `heads`.
#[derive(Debug, Default)]
struct Part {
    /// `None` until first built.
    heads: Option<Vec<ChangeHash>>,
    keys: BTreeSet<String>,
}

impl TagIndex {
    /// Names of the files of `owner` that carry `tag` in `doc`, in name order. Files whose
    /// head is deleted or purged may be among them: the caller reads each file's state.
    pub(crate) fn files_with(&self, doc: &Document, owner: &str, tag: &str) -> Vec<String> {
        let heads = doc.am.get_heads();
        let mut parts = self.parts.lock();
        let part = parts.entry(doc.id).or_default();
        if part.heads.as_ref() != Some(&heads) {
            part.keys = index_keys(doc);
            part.heads = Some(heads);
        }
        let prefix = format!("{owner}{SEP}{tag}");
        let skip = prefix.len() + SEP.len_utf8();
        part.keys
            .range(prefix_range(&prefix))
            .map(|k| k[skip..].to_owned())
            .collect()
    }

    /// Entries held now, over all documents (for tests and metrics).
    pub fn len(&self) -> usize {
        self.parts.lock().values().map(|p| p.keys.len()).sum()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The index keys of every tag in `doc`'s `tags` map.
fn index_keys(doc: &Document) -> BTreeSet<String> {
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
