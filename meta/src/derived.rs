//! State derived from the file documents and kept per document, so that reads which would
//! otherwise visit every file visit only what they need: which files carry a tag (`list
//! TAG`), and how many files are live or in conflict (`status`).
//!
//! Everything here is in memory only. [`crate::MetaStore::open`] builds each document's
//! state in one pass over its maps. After that it is kept up to date from the changes
//! themselves: every change, local or replicated, by whatever path it arrived, is written to
//! storage by `MetaStore::persist`, which hands the same bytes to [`Derived::advance`]. The
//! map keys those changes' operations touch are exactly the keys whose values may differ
//! (documents are flat: every operation puts or deletes one key of one genesis map), so
//! re-reading those files and tags brings the state to the document's new heads.
//!
//! Each state remembers the document heads it is valid at, and a read compares them with the
//! document's: a state that is missing, behind (a change that did not pass through `persist`)
//! or was dropped (a batch touching more than [`MAX_TOUCHED_KEYS`] keys, a change that did
//! not parse) is rebuilt from the document before it is read. So nothing read here is ever
//! stale; at worst it is slow once.

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;
use parking_lot::Mutex;

use crate::document::{DocId, Document, parse_changes};
use crate::error::MetaError;
use crate::names::{SEP, prefix_range};

/// Beyond this many touched keys in one persisted batch (a large sync), the document's state
/// is rebuilt on its next read instead: one pass over the document costs less than this many
/// lookups.
pub const MAX_TOUCHED_KEYS: usize = 4096;

/// What the counts keep of one file with a head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileFlags {
    /// The head is not a tombstone.
    pub live: bool,
    /// Two or more head candidates.
    pub conflicted: bool,
}

/// The derived state of one document, valid at `heads`.
#[derive(Debug)]
pub(crate) struct DocState {
    heads: Vec<ChangeHash>,
    /// `owner\x1ftag\x1fname` for every tag of every file: the files of one (owner, tag) are
    /// one ordered range. (The `tags` map's keys are `owner\x1fname\x1ftag`.)
    tags: BTreeSet<String>,
    /// Every file with a head, by a 64-bit hash of its key (a collision would merge two
    /// files' counts; at 1M files its chance is about 1 in 30 million).
    files: HashMap<u64, FileFlags>,
    live: usize,
    /// Files in conflict, per owner.
    conflicted: HashMap<String, usize>,
}

impl DocState {
    pub fn new(heads: Vec<ChangeHash>) -> Self {
        DocState {
            heads,
            tags: BTreeSet::new(),
            files: HashMap::new(),
            live: 0,
            conflicted: HashMap::new(),
        }
    }

    /// Records file `fkey`'s state: `None` when it has no head (never written, or purged).
    pub fn set_file(&mut self, fkey: &str, flags: Option<FileFlags>) {
        let id = file_hash(fkey);
        let old = match flags {
            Some(f) => self.files.insert(id, f),
            None => self.files.remove(&id),
        };
        let (old, new) = (old.unwrap_or_default(), flags.unwrap_or_default());
        self.live = self.live + usize::from(new.live) - usize::from(old.live);
        if old.conflicted != new.conflicted {
            let owner = fkey.split(SEP).next().unwrap_or_default();
            if new.conflicted {
                *self.conflicted.entry(owner.to_owned()).or_default() += 1;
            } else if let Some(n) = self.conflicted.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.conflicted.remove(owner);
                }
            }
        }
    }

    /// Records whether the key `tag_key` (`owner\x1fname\x1ftag`) is in the `tags` map. Keys
    /// of another shape are not tags and are ignored.
    pub fn set_tag(&mut self, tag_key: &str, present: bool) {
        if let Some(k) = index_key(tag_key) {
            if present {
                self.tags.insert(k);
            } else {
                self.tags.remove(&k);
            }
        }
    }

    /// Names of the files of `owner` that carry `tag`, in name order. Files whose head is
    /// deleted or purged may be among them: the caller reads each file's state.
    pub fn files_with(&self, owner: &str, tag: &str) -> Vec<String> {
        let prefix = format!("{owner}{SEP}{tag}");
        let skip = prefix.len() + SEP.len_utf8();
        self.tags
            .range(prefix_range(&prefix))
            .map(|k| k[skip..].to_owned())
            .collect()
    }

    /// Files whose head is not a tombstone.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Files with two or more head candidates, per owner.
    pub fn conflicted(&self) -> &HashMap<String, usize> {
        &self.conflicted
    }
}

/// The derived states of a store's file documents.
#[derive(Debug, Default)]
pub struct Derived {
    docs: Mutex<HashMap<DocId, DocState>>,
}

impl Derived {
    /// Keeps `state` as `id`'s.
    pub(crate) fn insert(&self, id: DocId, state: DocState) {
        self.docs.lock().insert(id, state);
    }

    /// Runs `read` on `doc`'s state, rebuilding it first with `build` if there is none or it
    /// is not at `doc`'s heads.
    pub(crate) fn read<R>(
        &self,
        doc: &Document,
        build: impl FnOnce(&Document) -> Result<DocState, MetaError>,
        read: impl FnOnce(&DocState) -> R,
    ) -> Result<R, MetaError> {
        let heads = doc.am.get_heads();
        let mut docs = self.docs.lock();
        if docs.get(&doc.id).is_none_or(|s| s.heads != heads) {
            docs.remove(&doc.id);
            let state = build(doc)?;
            docs.insert(doc.id, state);
        }
        let state = docs.get(&doc.id).expect("inserted above");
        Ok(read(state))
    }

    /// Brings `doc`'s state from `base` to `doc`'s heads, given `changes` (concatenated raw
    /// changes: everything `doc` has beyond `base`). `file` reads one file's flags and `tag`
    /// whether a key is in the `tags` map, both at `doc`'s heads. When the state is not at
    /// `base`, the changes do not parse, they touch too many keys or a read fails, the state
    /// is dropped, to be rebuilt on its next read: never advanced on a guess.
    pub(crate) fn advance(
        &self,
        doc: &Document,
        base: &[ChangeHash],
        changes: &[u8],
        mut file: impl FnMut(&str) -> Result<Option<FileFlags>, MetaError>,
        mut tag: impl FnMut(&str) -> Result<bool, MetaError>,
    ) {
        let mut docs = self.docs.lock();
        let Some(state) = docs.get_mut(&doc.id) else {
            return;
        };
        let advanced = state.heads == base
            && touched(changes, MAX_TOUCHED_KEYS, |obj| doc.map_name(obj)).is_some_and(|t| {
                let mut apply = || -> Result<(), MetaError> {
                    for fkey in &t.files {
                        state.set_file(fkey, file(fkey)?);
                    }
                    for key in &t.tags {
                        state.set_tag(key, tag(key)?);
                    }
                    Ok(())
                };
                apply().is_ok()
            });
        if advanced {
            state.heads = doc.am.get_heads();
        } else {
            docs.remove(&doc.id);
        }
    }
}

/// What a batch of changes touched.
#[derive(Debug, Default, PartialEq, Eq)]
struct Touched {
    /// Files whose head or a version record was put or deleted.
    files: BTreeSet<String>,
    /// Keys of the `tags` map put or deleted.
    tags: BTreeSet<String>,
}

/// What the operations of `changes` touch, given `map_name` of each operation's object; `None`
/// if `changes` do not parse, touch more than `max` keys, or touch anything but the keys of
/// the `heads`, `versions` and `tags` maps (which no replica writes: a rebuild then decides).
fn touched(
    changes: &[u8],
    max: usize,
    map_name: impl Fn(&automerge::legacy::ObjectId) -> Option<&'static str>,
) -> Option<Touched> {
    let mut out = Touched::default();
    for change in parse_changes(changes).ok()? {
        for op in change.decode().operations {
            let automerge::legacy::Key::Map(key) = op.key else {
                return None;
            };
            match map_name(&op.obj)? {
                "heads" => out.files.insert(key.to_string()),
                // `fkey\x1fvid`: another key shape is no file's record.
                "versions" => match key.rsplit_once(SEP) {
                    Some((fkey, _)) => out.files.insert(fkey.to_owned()),
                    None => false,
                },
                "tags" => out.tags.insert(key.to_string()),
                _ => return None,
            };
            if out.files.len() + out.tags.len() > max {
                return None;
            }
        }
    }
    Some(out)
}

fn file_hash(fkey: &str) -> u64 {
    let h = blake3::hash(fkey.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
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
    use automerge::transaction::Transactable;

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

    #[test]
    fn counts_follow_each_file_through_its_states() {
        let mut s = DocState::new(Vec::new());
        let (a, b) = (file_key("ann", "a"), file_key("bob", "b"));
        let live = FileFlags {
            live: true,
            conflicted: false,
        };
        let conflicted = FileFlags {
            live: true,
            conflicted: true,
        };
        let deleted = FileFlags {
            live: false,
            conflicted: false,
        };
        s.set_file(&a, Some(live));
        s.set_file(&b, Some(conflicted));
        s.set_file(&a, Some(live));
        assert_eq!((s.live(), s.conflicted().get("bob")), (2, Some(&1)));
        s.set_file(&b, Some(deleted));
        assert_eq!((s.live(), s.conflicted().get("bob")), (1, None));
        s.set_file(&a, None);
        s.set_file(&a, None);
        assert_eq!((s.live(), s.conflicted().len()), (0, 0));
    }

    #[test]
    fn touched_names_files_and_tags_by_map() {
        let (mut d, _) =
            Document::open(DocId::Files(0), crate::storage::StoredDoc::default()).unwrap();
        let base = d.am.get_heads();
        let f = file_key("ann", "a");
        d.transact(1, |tx, m| {
            tx.put(m.get("versions"), sub_key(&f, "v1"), vec![1u8])?;
            tx.put(m.get("versions"), "no separator", vec![1u8])?;
            tx.put(m.get("heads"), f.as_str(), "v1")?;
            tx.put(m.get("tags"), sub_key(&f, "t"), 1)?;
            tx.put(m.get("tags"), sub_key(&f, "gone"), 1)?;
            tx.delete(m.get("tags"), sub_key(&f, "gone"))
        })
        .unwrap();
        let bytes = d.am.save_after(&base);
        let t = touched(&bytes, 10, |obj| d.map_name(obj)).unwrap();
        assert_eq!(t.files, BTreeSet::from([f.clone()]));
        assert_eq!(
            t.tags,
            BTreeSet::from([sub_key(&f, "t"), sub_key(&f, "gone")])
        );
        assert_eq!(
            touched(&bytes, 2, |obj| d.map_name(obj)),
            None,
            "over the bound"
        );
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(touched(cut, 10, |obj| d.map_name(obj)), None, "truncated");
        let base = d.am.get_heads();
        d.transact(2, |tx, _| {
            tx.put_object(automerge::ROOT, "extra", automerge::ObjType::Map)
                .map(|_| ())
        })
        .unwrap();
        let bytes = d.am.save_after(&base);
        let outside = touched(&bytes, 10, |obj| d.map_name(obj));
        assert_eq!(outside, None, "a write outside the maps");
    }
}
