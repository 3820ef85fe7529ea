//! State derived from the file documents and kept per document, so that reads which would
//! otherwise visit every file visit only what they need: which files carry a tag (`list
//! TAG`), and how many files are live or in conflict (`status`).
//!
//! Everything here is in memory only. [`crate::MetaStore::open`] builds each document's
//! state in one pass over its maps. After that it is kept up to date from the changes
//! themselves: every change, local or replicated, by whatever path it arrived, is written to
//! storage by `MetaStore::persist`, which hands the same bytes to `Derived::advance`. The
//! map keys those changes' operations touch are exactly the keys whose values may differ
//! (documents are flat: every operation puts or deletes one key of one genesis map).
//! `advance` only notes them, so a write pays for decoding its own change; the next read
//! re-reads the noted files and tags, which brings the state to the document's heads. When
//! [`REREAD_AT`] keys are noted, the write that got there re-reads them instead, so a read
//! never pays for more than that many lookups per document however long it has been since
//! the last.
//!
//! Each state remembers the document heads it is valid at (noted keys included), and a read
//! compares them with the document's: a state that is missing, behind (a change that did not
//! pass through `persist`) or was dropped (a batch touching more than [`MAX_BATCH_KEYS`]
//! keys, a change that did not parse or wrote outside the three maps) is rebuilt from the document
//! before it is read. So nothing read here is ever stale; at worst it is slow once.

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;
use parking_lot::Mutex;

use crate::document::{DocId, Document, parse_changes};
use crate::error::MetaError;
use crate::names::{SEP, file_hash, prefix_range};

/// Noted keys of one document are re-read by the write that brings them to this many rather
/// than by the next read: a `status` reads every document, so it pays at most this many
/// lookups for each (about 1.5 ms at 1M files), and writes pay about 6 us each, amortized.
pub const REREAD_AT: usize = 256;

/// A single batch of changes touching more keys than this (a large sync) makes the
/// document's state be rebuilt on its next read instead of re-read key by key: one pass over
/// a document of 60k files costs about as much as this many lookups.
pub const MAX_BATCH_KEYS: usize = 4096;

/// What the counts keep of one file with a head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileFlags {
    /// The head is not a tombstone.
    pub live: bool,
    /// Two or more head candidates.
    pub conflicted: bool,
}

/// The derived state of one document, valid at `heads` once `pending` is re-read.
#[derive(Debug)]
pub(crate) struct DocState {
    heads: Vec<ChangeHash>,
    /// What changes since the last read touched: not yet reflected below.
    pending: Touched,
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
            pending: Touched::default(),
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

/// Reads of one document at its current heads, to bring its state there.
pub(crate) trait DocReader {
    /// The state built from scratch.
    fn build(&self) -> Result<DocState, MetaError>;
    /// The flags of file `fkey` (`None`: no head).
    fn file(&self, fkey: &str) -> Result<Option<FileFlags>, MetaError>;
    /// Whether `key` is in the `tags` map.
    fn tag(&self, key: &str) -> Result<bool, MetaError>;
}

impl Derived {
    /// Keeps `state` as `id`'s.
    pub(crate) fn insert(&self, id: DocId, state: DocState) {
        self.docs.lock().insert(id, state);
    }

    /// Runs `read` on `doc`'s state, first re-reading what changes touched since the last
    /// read, or rebuilding it if there is none or it is not at `doc`'s heads.
    pub(crate) fn read<R>(
        &self,
        doc: &Document,
        reader: &impl DocReader,
        read: impl FnOnce(&DocState) -> R,
    ) -> Result<R, MetaError> {
        let heads = doc.am.get_heads();
        let mut docs = self.docs.lock();
        let stale = match docs.get_mut(&doc.id) {
            Some(state) if state.heads == heads => catch_up(state, reader).is_err(),
            _ => true,
        };
        if stale {
            docs.remove(&doc.id);
            docs.insert(doc.id, reader.build()?);
        }
        let state = docs.get(&doc.id).expect("inserted above");
        Ok(read(state))
    }

    /// Notes what `changes` (concatenated raw changes: everything `doc` has beyond `base`)
    /// touch, for the next read, and moves `doc`'s state to `doc`'s heads; re-reads the noted
    /// keys with `reader` once there are [`REREAD_AT`] of them. When the state is not at
    /// `base`, or the changes do not parse, write outside the three maps or touch more than
    /// [`MAX_BATCH_KEYS`] keys themselves, or a re-read fails, the state is dropped, to
    /// be rebuilt on its next read: never advanced on a guess.
    pub(crate) fn advance(
        &self,
        doc: &Document,
        base: &[ChangeHash],
        changes: &[u8],
        reader: &impl DocReader,
    ) {
        let mut docs = self.docs.lock();
        let Some(state) = docs.get_mut(&doc.id) else {
            return;
        };
        let bound = state.pending.len() + MAX_BATCH_KEYS;
        let mut kept = state.heads == base
            && note(&mut state.pending, changes, bound, |obj| doc.map_name(obj));
        if kept {
            state.heads = doc.am.get_heads();
            if state.pending.len() >= REREAD_AT {
                kept = catch_up(state, reader).is_ok();
            }
        }
        if !kept {
            docs.remove(&doc.id);
        }
    }
}

/// Re-reads what `state.pending` names. On error the state is half updated: drop it.
fn catch_up(state: &mut DocState, reader: &impl DocReader) -> Result<(), MetaError> {
    let pending = std::mem::take(&mut state.pending);
    for fkey in &pending.files {
        state.set_file(fkey, reader.file(fkey)?);
    }
    for key in &pending.tags {
        state.set_tag(key, reader.tag(key)?);
    }
    Ok(())
}

/// What a batch of changes touched.
#[derive(Debug, Default, PartialEq, Eq)]
struct Touched {
    /// Files whose head or a version record was put or deleted.
    files: BTreeSet<String>,
    /// Keys of the `tags` map put or deleted.
    tags: BTreeSet<String>,
}

impl Touched {
    fn len(&self) -> usize {
        self.files.len() + self.tags.len()
    }
}

/// Adds what the operations of `changes` touch to `out`, given `map_name` of each operation's
/// object. `false` if `changes` do not parse, `out` would hold more than `max` keys, or an
/// operation touches anything but the keys of the `heads`, `versions` and `tags` maps (which
/// no replica writes: a rebuild then decides).
fn note(
    out: &mut Touched,
    changes: &[u8],
    max: usize,
    map_name: impl Fn(&automerge::legacy::ObjectId) -> Option<&'static str>,
) -> bool {
    let Ok(changes) = parse_changes(changes) else {
        return false;
    };
    for change in changes {
        for op in change.decode().operations {
            let automerge::legacy::Key::Map(key) = op.key else {
                return false;
            };
            let Some(map) = map_name(&op.obj) else {
                return false;
            };
            match map {
                "heads" => out.files.insert(key.to_string()),
                // `fkey\x1fvid`: another key shape is no file's record.
                "versions" => match key.rsplit_once(SEP) {
                    Some((fkey, _)) => out.files.insert(fkey.to_owned()),
                    None => false,
                },
                "tags" => out.tags.insert(key.to_string()),
                _ => return false,
            };
            if out.len() > max {
                return false;
            }
        }
    }
    true
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

    fn touched(d: &Document, changes: &[u8], max: usize) -> Option<Touched> {
        let mut t = Touched::default();
        note(&mut t, changes, max, |obj| d.map_name(obj)).then_some(t)
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
        let t = touched(&d, &bytes, 10).unwrap();
        assert_eq!(t.files, BTreeSet::from([f.clone()]));
        assert_eq!(
            t.tags,
            BTreeSet::from([sub_key(&f, "t"), sub_key(&f, "gone")])
        );
        assert_eq!(touched(&d, &bytes, 2), None, "over the bound");
        assert_eq!(
            touched(&d, &bytes[..bytes.len() - 1], 10),
            None,
            "truncated"
        );
        let base = d.am.get_heads();
        d.transact(2, |tx, _| {
            tx.put_object(automerge::ROOT, "extra", automerge::ObjType::Map)
                .map(|_| ())
        })
        .unwrap();
        let bytes = d.am.save_after(&base);
        assert_eq!(touched(&d, &bytes, 10), None, "a write outside the maps");
    }

    /// Answers every file as live and every tag as present, counting its calls.
    #[derive(Default)]
    struct CountingReader {
        builds: std::cell::Cell<usize>,
        files: std::cell::Cell<usize>,
    }

    impl DocReader for CountingReader {
        fn build(&self) -> Result<DocState, MetaError> {
            self.builds.set(self.builds.get() + 1);
            Ok(DocState::new(Vec::new()))
        }

        fn file(&self, _: &str) -> Result<Option<FileFlags>, MetaError> {
            self.files.set(self.files.get() + 1);
            Ok(Some(FileFlags {
                live: true,
                conflicted: false,
            }))
        }

        fn tag(&self, _: &str) -> Result<bool, MetaError> {
            Ok(true)
        }
    }

    /// Commits `keys` new heads to `d` in one change and hands it to `derived`.
    fn write(d: &mut Document, derived: &Derived, reader: &CountingReader, keys: Vec<String>) {
        let base = d.am.get_heads();
        d.transact(1, |tx, m| {
            keys.iter()
                .try_for_each(|k| tx.put(m.get("heads"), k.as_str(), "v"))
        })
        .unwrap();
        derived.advance(d, &base, &d.am.save_after(&base), reader);
    }

    #[test]
    fn notes_are_read_by_the_write_that_fills_them_or_by_the_next_read() {
        let (mut d, _) =
            Document::open(DocId::Files(0), crate::storage::StoredDoc::default()).unwrap();
        let (derived, reader) = (Derived::default(), CountingReader::default());
        derived.insert(d.id, DocState::new(d.am.get_heads()));
        let n = REREAD_AT + 10;
        for i in 0..n {
            write(
                &mut d,
                &derived,
                &reader,
                vec![file_key("ann", &i.to_string())],
            );
        }
        assert_eq!(reader.files.get(), REREAD_AT, "re-read by the write");
        let live = derived.read(&d, &reader, DocState::live).unwrap();
        assert_eq!((live, reader.files.get(), reader.builds.get()), (n, n, 0));

        // A batch under the bound is re-read by its write too.
        let some: Vec<String> = (0..MAX_BATCH_KEYS)
            .map(|i| file_key("cat", &i.to_string()))
            .collect();
        write(&mut d, &derived, &reader, some);
        assert_eq!(reader.files.get(), n + MAX_BATCH_KEYS);
        let live = derived.read(&d, &reader, DocState::live).unwrap();
        assert_eq!((live, reader.builds.get()), (n + MAX_BATCH_KEYS, 0));

        // One batch over the bound: the state is rebuilt by the next read, not advanced.
        let many = (0..=MAX_BATCH_KEYS)
            .map(|i| file_key("bob", &i.to_string()))
            .collect();
        write(&mut d, &derived, &reader, many);
        let read = reader.files.get();
        assert_eq!(
            read,
            n + MAX_BATCH_KEYS,
            "no re-read of a batch over the bound"
        );
        derived.read(&d, &reader, DocState::live).unwrap();
        assert_eq!(reader.builds.get(), 1);
    }
}
