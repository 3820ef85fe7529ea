//! File operations and queries on the `files/<k>` documents.
//!
//! Per document three flat maps (see `names` for the key layout):
//! - `versions`: `owner\x1fname\x1fvid` -> encoded [`VersionRecord`];
//! - `heads`: `owner\x1fname` -> vid. Concurrent writes leave an Automerge conflict here, and
//!   that conflict set is the set of head candidates; `resolve::winner` picks the head;
//! - `tags`: `owner\x1fname\x1ftag` -> the HLC timestamp of the add (u64); add is a put,
//!   remove a delete, so a concurrent add and remove ends with the tag present (add wins). The
//!   value is a timestamp rather than `true` because Automerge writes no op for a put of the
//!   value a key already holds, and a re-add that writes nothing would lose to a concurrent
//!   remove.
//!
//! Every head change (write, delete, restore, resolve) is a new version record plus a put on
//! `heads`, which supersedes every candidate this replica has seen. A deleted file is one whose
//! winning head is a tombstone (`deleted = true`): `file` and `list` do not show it, `history`,
//! `conflicts` and `live_chunks` still do, until `purge_expired` drops it after the trash
//! retention.

use std::collections::{BTreeMap, HashMap};

use automerge::ReadDoc;
use automerge::transaction::Transactable;

use crate::derived::{DocReader, DocState, FileFlags};
use crate::document::DocId;
use crate::error::MetaError;
use crate::hlc::Timestamp;
use crate::names::{self, file_key, prefix_range, sub_key};
use crate::record::{ChunkHash, ChunkRef, VersionRecord};
use crate::resolve::{self, Candidate};
use crate::store::{Commit, MetaStore};
use crate::vv::VersionVector;

mod batch;

pub use batch::NewFile;

/// Most files purged from one document per call, so one purge change stays far below the
/// replication message limit.
const MAX_PURGE_PER_DOC: usize = 2_000;

/// Content of a new file version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVersion {
    pub size: u64,
    pub blake3: [u8; 32],
    /// Chunks in file order: hash and length. The lengths must add up to `size`.
    pub chunks: Vec<(ChunkHash, u64)>,
    /// Tags to add to the file (tags of earlier versions stay).
    pub tags: Vec<String>,
}

/// One version of a file as queries show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionView {
    pub vid: String,
    pub size: u64,
    pub blake3: [u8; 32],
    pub chunks: Vec<ChunkRef>,
    pub created: Timestamp,
    pub origin: String,
    pub vv: VersionVector,
    pub deleted: bool,
    pub restored_from: Option<String>,
    /// One of the current head candidates.
    pub is_candidate: bool,
    /// The winning head candidate.
    pub is_head: bool,
}

/// A live file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileView {
    pub name: String,
    pub head: VersionView,
    pub tags: Vec<String>,
    /// More than one head candidate: see `conflicts`.
    pub conflicted: bool,
}

/// A file with concurrent head candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictView {
    pub name: String,
    /// All candidates, winner first, then by descending creation time.
    pub candidates: Vec<VersionView>,
    pub winner: String,
}

/// What `purge_expired` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    pub files: usize,
    pub versions: usize,
    pub commits: Vec<Commit>,
}

/// A file's current head candidates, decoded.
struct HeadState {
    candidates: Vec<(String, VersionRecord)>,
    winner: usize,
}

impl HeadState {
    /// The state of a file with these head candidates (version id, record), or `None` for
    /// none.
    fn new(mut candidates: Vec<(String, VersionRecord)>) -> Option<Self> {
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        let view: Vec<Candidate<'_>> = candidates
            .iter()
            .map(|(vid, r)| Candidate {
                vid,
                vv: &r.vv,
                created: r.created,
                origin: &r.origin,
            })
            .collect();
        let winner = resolve::winner(&view)?;
        Some(HeadState { candidates, winner })
    }

    fn flags(&self) -> FileFlags {
        FileFlags {
            live: !self.winner().1.deleted,
            conflicted: self.candidates.len() >= 2,
        }
    }

    fn winner(&self) -> &(String, VersionRecord) {
        &self.candidates[self.winner]
    }

    fn view(&self, i: usize) -> VersionView {
        let (vid, rec) = &self.candidates[i];
        view(vid, rec, true, i == self.winner)
    }

    fn merged_vv(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for (_, rec) in &self.candidates {
            vv.merge(&rec.vv);
        }
        vv
    }
}

/// A head version ready to be written: [`MetaStore::write_head`] puts one in a change of its
/// own, a batch of adds many in one change per document.
pub(crate) struct NewHead {
    doc: DocId,
    fkey: String,
    vid: String,
    /// The encoded [`VersionRecord`].
    record: Vec<u8>,
    tags: Vec<String>,
    time: Timestamp,
    /// The version as the writer sees it once written.
    view: VersionView,
}

impl NewHead {
    /// About how many bytes its operations put: the record and every key and value.
    fn size(&self) -> usize {
        let tag_entry = self.fkey.len() + 1 + 8;
        self.record.len()
            + 2 * self.fkey.len()
            + 2 * self.vid.len()
            + self.tags.iter().map(|t| tag_entry + t.len()).sum::<usize>()
    }

    /// Puts the record, the head and the tags.
    fn put(
        &self,
        tx: &mut automerge::transaction::Transaction<'_>,
        m: &crate::document::MapIds<'_>,
    ) -> Result<(), automerge::AutomergeError> {
        let fkey = self.fkey.as_str();
        tx.put(
            m.get("versions"),
            sub_key(fkey, &self.vid),
            self.record.clone(),
        )?;
        tx.put(m.get("heads"), fkey, self.vid.as_str())?;
        for tag in &self.tags {
            tx.put(m.get("tags"), sub_key(fkey, tag), self.time.0)?;
        }
        Ok(())
    }
}

/// The version record stored under `key` as `value`.
fn record(
    id: DocId,
    key: &str,
    value: &automerge::ValueRef<'_>,
) -> Result<VersionRecord, MetaError> {
    match value {
        automerge::ValueRef::Scalar(automerge::ScalarValueRef::Bytes(b)) => {
            VersionRecord::decode(b).map_err(|e| corrupt(id, key, e))
        }
        _ => Err(corrupt(id, key, "not bytes")),
    }
}

fn view(vid: &str, rec: &VersionRecord, is_candidate: bool, is_head: bool) -> VersionView {
    VersionView {
        vid: vid.to_owned(),
        size: rec.size,
        blake3: rec.blake3,
        chunks: rec.chunks.clone(),
        created: rec.created,
        origin: rec.origin.clone(),
        vv: rec.vv.clone(),
        deleted: rec.deleted,
        restored_from: rec.restored_from.clone(),
        is_candidate,
        is_head,
    }
}

/// The reads [`crate::derived`] makes of one file document.
pub(crate) struct Reader<'a> {
    store: &'a MetaStore,
    id: DocId,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(store: &'a MetaStore, id: DocId) -> Self {
        Reader { store, id }
    }
}

impl DocReader for Reader<'_> {
    fn build(&self) -> Result<DocState, MetaError> {
        self.store.derive(self.id)
    }

    fn file(&self, fkey: &str) -> Result<Option<FileFlags>, MetaError> {
        Ok(self
            .store
            .head_state(self.id, fkey)?
            .as_ref()
            .map(HeadState::flags))
    }

    fn tag(&self, key: &str) -> Result<bool, MetaError> {
        self.store.has_tag_key(self.id, key)
    }
}

/// A new version id: the HLC timestamp (so ids sort by creation) and 32 random bits (so two
/// incarnations sharing a node id and clock state cannot collide).
fn new_vid(ts: Timestamp) -> String {
    format!("{:016x}{:08x}", ts.0, rand::random::<u32>())
}

fn corrupt(doc: DocId, key: &str, reason: impl Into<String>) -> MetaError {
    MetaError::CorruptRecord {
        doc: doc.to_string(),
        key: key.replace(names::SEP, "/"),
        reason: reason.into(),
    }
}

impl MetaStore {
    /// The document holding `(owner, name)`: `files/<k>`, k = first 8 bytes (little endian) of
    /// BLAKE3(`owner\x1fname`) mod the shard count.
    pub fn file_doc(&self, owner: &str, name: &str) -> DocId {
        let k = names::file_hash(&file_key(owner, name));
        DocId::Files((k % u64::from(self.shards())) as u32)
    }

    pub(crate) fn file_docs(&self) -> impl Iterator<Item = DocId> + '_ {
        (0..self.shards()).map(DocId::Files)
    }

    fn read_version(&self, id: DocId, key: &str) -> Result<Option<VersionRecord>, MetaError> {
        let doc = self.doc(id)?;
        match doc.am.get(doc.map("versions"), key) {
            Ok(Some((v, _))) => {
                let bytes = v.as_bytes().ok_or_else(|| corrupt(id, key, "not bytes"))?;
                VersionRecord::decode(bytes)
                    .map(Some)
                    .map_err(|e| corrupt(id, key, e))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(corrupt(id, key, e.to_string())),
        }
    }

    /// The head candidates of the file at `fkey`, or `None` if it has none (never written, or
    /// purged). A candidate whose record is missing is skipped.
    fn head_state(&self, id: DocId, fkey: &str) -> Result<Option<HeadState>, MetaError> {
        let doc = self.doc(id)?;
        let values = doc
            .am
            .get_all(doc.map("heads"), fkey)
            .map_err(|e| corrupt(id, fkey, e.to_string()))?;
        let mut candidates = Vec::with_capacity(values.len());
        for (v, _) in values {
            let vid = v
                .as_str()
                .ok_or_else(|| corrupt(id, fkey, "head is not a string"))?
                .to_owned();
            if let Some(rec) = self.read_version(id, &sub_key(fkey, &vid))? {
                candidates.push((vid, rec));
            }
        }
        Ok(HeadState::new(candidates))
    }

    /// Calls `each` with the [`FileFlags`] of every file of document `id`, in one pass over
    /// its `heads` and `versions` maps: both are in key order, and the record of the head
    /// `vid` of file `fkey` is at `fkey\x1fvid`, so the pass over `versions` only moves
    /// forward. A file in conflict, or whose record the pass did not meet where expected, is
    /// read by key instead ([`MetaStore::head_state`]), so the answer never depends on the
    /// order, only the speed.
    fn scan_file_flags(
        &self,
        id: DocId,
        mut each: impl FnMut(&str, Option<FileFlags>),
    ) -> Result<(), MetaError> {
        let doc = self.doc(id)?;
        let mut versions = doc.am.map_range(doc.map("versions"), ..).peekable();
        for item in doc.am.map_range(doc.map("heads"), ..) {
            let fkey = item.key.as_ref();
            let vid = match &item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(s)) => s.as_ref(),
                _ => return Err(corrupt(id, fkey, "head is not a string")),
            };
            if item.conflict {
                each(
                    fkey,
                    self.head_state(id, fkey)?.as_ref().map(HeadState::flags),
                );
                continue;
            }
            let vkey = sub_key(fkey, vid);
            while versions
                .next_if(|v| v.key.as_ref() < vkey.as_str())
                .is_some()
            {}
            let rec = match versions.next_if(|v| v.key == vkey) {
                Some(v) => Some(record(id, &vkey, &v.value)?),
                None => self.read_version(id, &vkey)?,
            };
            let state = rec.and_then(|rec| HeadState::new(vec![(vid.to_owned(), rec)]));
            each(fkey, state.as_ref().map(HeadState::flags));
        }
        Ok(())
    }

    /// Every tag key (`owner\x1fname\x1ftag`) of document `id`.
    fn scan_tag_keys(&self, id: DocId, mut each: impl FnMut(&str)) -> Result<(), MetaError> {
        let doc = self.doc(id)?;
        for item in doc.am.map_range(doc.map("tags"), ..) {
            each(&item.key);
        }
        Ok(())
    }

    fn tags_of(&self, id: DocId, fkey: &str) -> Result<Vec<String>, MetaError> {
        let doc = self.doc(id)?;
        Ok(doc
            .am
            .map_range(doc.map("tags"), prefix_range(fkey))
            .map(|item| names::last_part(&item.key).to_owned())
            .collect())
    }

    fn has_tag(&self, id: DocId, fkey: &str, tag: &str) -> Result<bool, MetaError> {
        self.has_tag_key(id, &sub_key(fkey, tag))
    }

    /// Whether `key` (`owner\x1fname\x1ftag`) is in document `id`'s `tags` map.
    fn has_tag_key(&self, id: DocId, key: &str) -> Result<bool, MetaError> {
        let doc = self.doc(id)?;
        Ok(doc
            .am
            .get(doc.map("tags"), key)
            .map_err(|e| corrupt(id, key, e.to_string()))?
            .is_some())
    }

    /// Writes `head` in a change of its own: record, head put, tags.
    fn write_head(&mut self, head: NewHead) -> Result<(VersionView, Commit), MetaError> {
        let ((), commit) = self.commit(head.doc, head.time, |tx, m| head.put(tx, m))?;
        Ok((head.view, commit))
    }

    /// A new head version of `(owner, name)` succeeding the candidates of `state`, ready to
    /// be written.
    fn new_head(
        &self,
        owner: &str,
        name: &str,
        time: Timestamp,
        state: Option<&HeadState>,
        content: VersionRecord,
        tags: &[String],
    ) -> NewHead {
        let mut vv = state.map(HeadState::merged_vv).unwrap_or_default();
        vv.increment(self.config.node_id.as_str());
        let rec = VersionRecord {
            created: time,
            vv,
            origin: self.config.node_id.to_string(),
            ..content
        };
        let vid = new_vid(time);
        NewHead {
            doc: self.file_doc(owner, name),
            fkey: file_key(owner, name),
            record: rec.encode(),
            view: view(&vid, &rec, true, true),
            vid,
            tags: tags.to_vec(),
            time,
        }
    }

    /// Checks a new version of `(owner, name)` as `add_version` takes it.
    fn check_new_version(
        &self,
        owner: &str,
        name: &str,
        version: &NewVersion,
    ) -> Result<(), MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        for tag in &version.tags {
            names::validate_tag(tag)?;
        }
        let max_chunks = self.config.limits.max_chunks_per_version;
        if version.chunks.len() > max_chunks {
            return Err(MetaError::invalid(
                "chunks",
                format!("{} chunks, more than {max_chunks}", version.chunks.len()),
            ));
        }
        let total = version
            .chunks
            .iter()
            .try_fold(0u64, |acc, (_, len)| acc.checked_add(*len));
        if total != Some(version.size) {
            return Err(MetaError::invalid(
                "chunks",
                format!(
                    "chunk lengths add up to {total:?}, not the file size {}",
                    version.size
                ),
            ));
        }
        Ok(())
    }

    /// Add a new version of `(owner, name)` (creating the file). `after` is a timestamp the
    /// client has already seen (say, its previous acknowledged write): the new version gets a
    /// later one even if this controller's clock is behind.
    pub fn add_version(
        &mut self,
        owner: &str,
        name: &str,
        version: NewVersion,
        wall_ms: u64,
        after: Option<Timestamp>,
    ) -> Result<(VersionView, Commit), MetaError> {
        self.check_new_version(owner, name, &version)?;
        let head = self.prepare_head(owner, name, version, after, wall_ms)?;
        self.write_head(head)
    }

    /// The new head of `(owner, name)`, succeeding its current head candidates, at a fresh
    /// timestamp.
    fn prepare_head(
        &mut self,
        owner: &str,
        name: &str,
        version: NewVersion,
        after: Option<Timestamp>,
        wall_ms: u64,
    ) -> Result<NewHead, MetaError> {
        let state = self.head_state(self.file_doc(owner, name), &file_key(owner, name))?;
        let time = self.next_timestamp(wall_ms, after)?;
        let content = VersionRecord {
            size: version.size,
            blake3: version.blake3,
            chunks: version
                .chunks
                .iter()
                .map(|&(hash, len)| ChunkRef { hash, len })
                .collect(),
            created: time,
            vv: VersionVector::new(),
            origin: String::new(),
            deleted: false,
            restored_from: None,
        };
        Ok(self.new_head(owner, name, time, state.as_ref(), content, &version.tags))
    }

    /// Delete `(owner, name)`: a new tombstone head. `NotFound` if the file is not live.
    pub fn delete(
        &mut self,
        owner: &str,
        name: &str,
        wall_ms: u64,
        after: Option<Timestamp>,
    ) -> Result<(VersionView, Commit), MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        let id = self.file_doc(owner, name);
        let state = self.head_state(id, &file_key(owner, name))?;
        match &state {
            Some(s) if !s.winner().1.deleted => {}
            _ => return Err(MetaError::NotFound(format!("file {name:?}"))),
        }
        let time = self.next_timestamp(wall_ms, after)?;
        let tombstone = VersionRecord {
            size: 0,
            blake3: [0; 32],
            chunks: Vec::new(),
            created: time,
            vv: VersionVector::new(),
            origin: String::new(),
            deleted: true,
            restored_from: None,
        };
        self.write_head(self.new_head(owner, name, time, state.as_ref(), tombstone, &[]))
    }

    /// Make a copy of version `vid` the new head (roll back, or undelete a deleted file).
    pub fn restore(
        &mut self,
        owner: &str,
        name: &str,
        vid: &str,
        wall_ms: u64,
        after: Option<Timestamp>,
    ) -> Result<(VersionView, Commit), MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        let id = self.file_doc(owner, name);
        let fkey = file_key(owner, name);
        let source = self
            .read_version(id, &sub_key(&fkey, vid))?
            .ok_or_else(|| MetaError::NotFound(format!("version {vid:?} of file {name:?}")))?;
        if source.deleted {
            return Err(MetaError::invalid(
                "version",
                format!("{vid:?} is a deletion marker; restore a version with content"),
            ));
        }
        let state = self.head_state(id, &fkey)?;
        let time = self.next_timestamp(wall_ms, after)?;
        let content = VersionRecord {
            restored_from: Some(vid.to_owned()),
            ..source
        };
        self.write_head(self.new_head(owner, name, time, state.as_ref(), content, &[]))
    }

    /// End a conflict: a new head with the content of candidate `vid` (a tombstone candidate
    /// keeps the file deleted), superseding every current candidate.
    pub fn resolve_conflict(
        &mut self,
        owner: &str,
        name: &str,
        vid: &str,
        wall_ms: u64,
        after: Option<Timestamp>,
    ) -> Result<(VersionView, Commit), MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        let id = self.file_doc(owner, name);
        let state = self
            .head_state(id, &file_key(owner, name))?
            .ok_or_else(|| MetaError::NotFound(format!("file {name:?}")))?;
        let source = state
            .candidates
            .iter()
            .find(|(v, _)| v == vid)
            .map(|(_, rec)| rec.clone())
            .ok_or_else(|| {
                MetaError::invalid(
                    "version",
                    format!("{vid:?} is not a current head candidate of {name:?}"),
                )
            })?;
        let time = self.next_timestamp(wall_ms, after)?;
        let content = VersionRecord {
            restored_from: Some(vid.to_owned()),
            ..source
        };
        self.write_head(self.new_head(owner, name, time, Some(&state), content, &[]))
    }

    /// Add tags to a live file. Always writes (even a tag already present), so a concurrent
    /// remove elsewhere does not win over this add.
    pub fn add_tags(
        &mut self,
        owner: &str,
        name: &str,
        tags: &[String],
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        self.check_live(owner, name, tags)?;
        if tags.is_empty() {
            return Ok(None);
        }
        let fkey = file_key(owner, name);
        let id = self.file_doc(owner, name);
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(id, time, |tx, m| {
            for tag in tags {
                tx.put(m.get("tags"), sub_key(&fkey, tag), time.0)?;
            }
            Ok(())
        })?;
        Ok(Some(commit))
    }

    /// Remove tags from a live file; `None` if it had none of them.
    pub fn remove_tags(
        &mut self,
        owner: &str,
        name: &str,
        tags: &[String],
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        self.check_live(owner, name, tags)?;
        let fkey = file_key(owner, name);
        let id = self.file_doc(owner, name);
        let mut present = Vec::new();
        for tag in tags {
            if self.has_tag(id, &fkey, tag)? && !present.contains(tag) {
                present.push(tag.clone());
            }
        }
        if present.is_empty() {
            return Ok(None);
        }
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(id, time, |tx, m| {
            for tag in &present {
                tx.delete(m.get("tags"), sub_key(&fkey, tag))?;
            }
            Ok(())
        })?;
        Ok(Some(commit))
    }

    fn check_live(&self, owner: &str, name: &str, tags: &[String]) -> Result<(), MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        for tag in tags {
            names::validate_tag(tag)?;
        }
        if self.file(owner, name)?.is_none() {
            return Err(MetaError::NotFound(format!("file {name:?}")));
        }
        Ok(())
    }

    /// The live file `(owner, name)`; `None` if it does not exist or its head is a tombstone.
    pub fn file(&self, owner: &str, name: &str) -> Result<Option<FileView>, MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        let id = self.file_doc(owner, name);
        self.file_at(id, &file_key(owner, name), name)
    }

    fn file_at(&self, id: DocId, fkey: &str, name: &str) -> Result<Option<FileView>, MetaError> {
        let Some(state) = self.head_state(id, fkey)? else {
            return Ok(None);
        };
        if state.winner().1.deleted {
            return Ok(None);
        }
        Ok(Some(FileView {
            name: name.to_owned(),
            head: state.view(state.winner),
            tags: self.tags_of(id, fkey)?,
            conflicted: state.candidates.len() > 1,
        }))
    }

    /// Keys in `heads` of `owner` (or of everyone), per document.
    fn file_keys(&self, id: DocId, owner: Option<&str>) -> Result<Vec<String>, MetaError> {
        let doc = self.doc(id)?;
        let heads = doc.map("heads");
        Ok(match owner {
            Some(o) => doc
                .am
                .map_range(heads, prefix_range(o))
                .map(|i| i.key.into_owned())
                .collect(),
            None => doc
                .am
                .map_range(heads, ..)
                .map(|i| i.key.into_owned())
                .collect(),
        })
    }

    /// Live files of `owner` carrying all of `tags` (all live files for no tags), by name.
    /// With tags, only the files carrying the first one are read ([`crate::derived`]).
    pub fn list(&self, owner: &str, tags: &[String]) -> Result<Vec<FileView>, MetaError> {
        validate_query(owner, tags)?;
        let Some((first, rest)) = tags.split_first() else {
            return self.list_scan(owner, tags);
        };
        let mut out = Vec::new();
        for id in self.file_docs() {
            for name in self.derived(id, |d| d.files_with(owner, first))? {
                out.extend(self.listed(id, owner, &name, rest)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// [`MetaStore::list`] by reading every file of `owner`: all files for no tags, and the
    /// reference the tag index is tested against.
    pub fn list_scan(&self, owner: &str, tags: &[String]) -> Result<Vec<FileView>, MetaError> {
        validate_query(owner, tags)?;
        let prefix_len = owner.len() + 1;
        let mut out = Vec::new();
        for id in self.file_docs() {
            for fkey in self.file_keys(id, Some(owner))? {
                out.extend(self.listed(id, owner, &fkey[prefix_len..], tags)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The file `owner`/`name` of document `id` if it is live and carries every one of `tags`.
    fn listed(
        &self,
        id: DocId,
        owner: &str,
        name: &str,
        tags: &[String],
    ) -> Result<Option<FileView>, MetaError> {
        let fkey = file_key(owner, name);
        for tag in tags {
            if !self.has_tag(id, &fkey, tag)? {
                return Ok(None);
            }
        }
        self.file_at(id, &fkey, name)
    }

    /// Every retained version of `(owner, name)`, oldest first, with candidate/head markers.
    pub fn history(&self, owner: &str, name: &str) -> Result<Vec<VersionView>, MetaError> {
        names::validate_user(owner)?;
        names::validate_name(name)?;
        let id = self.file_doc(owner, name);
        let fkey = file_key(owner, name);
        let state = self.head_state(id, &fkey)?;
        let doc = self.doc(id)?;
        let mut out = Vec::new();
        for item in doc.am.map_range(doc.map("versions"), prefix_range(&fkey)) {
            let vid = names::last_part(&item.key);
            let rec = self
                .read_version(id, &item.key)?
                .ok_or_else(|| corrupt(id, &item.key, "vanished"))?;
            let (cand, head) = match &state {
                Some(s) => (
                    s.candidates.iter().any(|(v, _)| v == vid),
                    s.winner().0 == vid,
                ),
                None => (false, false),
            };
            out.push(view(vid, &rec, cand, head));
        }
        out.sort_by(|a, b| (a.created, &a.vid).cmp(&(b.created, &b.vid)));
        Ok(out)
    }

    /// Files of `owner` with more than one head candidate, by name.
    pub fn conflicts(&self, owner: &str) -> Result<Vec<ConflictView>, MetaError> {
        names::validate_user(owner)?;
        let prefix_len = owner.len() + 1;
        let mut out = Vec::new();
        for id in self.file_docs() {
            for fkey in self.file_keys(id, Some(owner))? {
                let Some(state) = self.head_state(id, &fkey)? else {
                    continue;
                };
                if state.candidates.len() < 2 {
                    continue;
                }
                let mut candidates: Vec<_> =
                    (0..state.candidates.len()).map(|i| state.view(i)).collect();
                candidates.sort_by(|a, b| {
                    (b.is_head, b.created, &b.vid).cmp(&(a.is_head, a.created, &a.vid))
                });
                out.push(ConflictView {
                    name: fkey[prefix_len..].to_owned(),
                    winner: state.winner().0.clone(),
                    candidates,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every chunk referenced by a retained version (heads, losers, old versions, tombstoned
    /// files' versions; not purged ones), with its length. What GC must keep.
    pub fn live_chunks(&self) -> Result<BTreeMap<ChunkHash, u64>, MetaError> {
        let mut out = BTreeMap::new();
        for id in self.file_docs() {
            let doc = self.doc(id)?;
            for item in doc.am.map_range(doc.map("versions"), ..) {
                let rec = record(id, &item.key, &item.value)?;
                for c in rec.chunks {
                    out.insert(c.hash, c.len);
                }
            }
        }
        Ok(out)
    }

    /// Which of `candidates` some version of `owner` references: the chunks an upload by
    /// `owner` may skip without learning anything about other users' data.
    pub fn owner_references(
        &self,
        owner: &str,
        candidates: &std::collections::HashSet<ChunkHash>,
    ) -> Result<std::collections::HashSet<ChunkHash>, MetaError> {
        names::validate_user(owner)?;
        let mut out = std::collections::HashSet::new();
        for id in self.file_docs() {
            let doc = self.doc(id)?;
            for item in doc.am.map_range(doc.map("versions"), prefix_range(owner)) {
                let rec = record(id, &item.key, &item.value)?;
                for c in rec.chunks {
                    if candidates.contains(&c.hash) {
                        out.insert(c.hash);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Number of live files, all owners.
    pub fn file_count(&self) -> Result<usize, MetaError> {
        let mut n = 0;
        for id in self.file_docs() {
            n += self.derived(id, DocState::live)?;
        }
        Ok(n)
    }

    /// How many files of each owner have concurrent head candidates (`conflicts(owner).len()`
    /// for every owner at once, from the derived per-document counts).
    pub fn conflict_counts(&self) -> Result<HashMap<String, usize>, MetaError> {
        let mut out: HashMap<String, usize> = HashMap::new();
        for id in self.file_docs() {
            self.derived(id, |d| {
                for (owner, n) in d.conflicted() {
                    *out.entry(owner.clone()).or_default() += n;
                }
            })?;
        }
        Ok(out)
    }

    /// `read` of document `id`'s derived state ([`crate::derived`]), brought to the
    /// document's heads first.
    fn derived<R>(&self, id: DocId, read: impl FnOnce(&DocState) -> R) -> Result<R, MetaError> {
        let reader = Reader::new(self, id);
        self.derived.read(self.doc(id)?, &reader, read)
    }

    /// Document `id`'s derived state built from scratch, in one pass over its maps.
    pub(crate) fn derive(&self, id: DocId) -> Result<DocState, MetaError> {
        let mut state = DocState::new(self.doc(id)?.am.get_heads());
        self.scan_tag_keys(id, |key| state.set_tag(key, true))?;
        self.scan_file_flags(id, |fkey, flags| state.set_file(fkey, flags))?;
        Ok(state)
    }

    /// Drop every trace (versions, head, tags) of deleted files whose tombstone is the only
    /// head candidate and is older than the trash retention. A live file, or a deleted file
    /// still in conflict, is never touched. A write racing with the purge on another replica
    /// survives it: its put on `heads` beats the purge's delete.
    pub fn purge_expired(&mut self, wall_ms: u64) -> Result<PurgeOutcome, MetaError> {
        self.purge_expired_at(wall_ms, u64::MAX)
    }

    /// [`MetaStore::purge_expired`] that also waits until this controller has itself known
    /// the tombstone for the retention period, on its monotonic clock (`mono_ms`). The
    /// tombstone's own timestamp comes from the deleting controller's clock: one whose clock
    /// was slow (and not yet corrected) when it deleted would otherwise have its deletion
    /// purged early everywhere. Both must hold, so neither a wrong clock here nor one there
    /// shortens the trash.
    pub fn purge_expired_at(
        &mut self,
        wall_ms: u64,
        mono_ms: u64,
    ) -> Result<PurgeOutcome, MetaError> {
        let retention = self.settings()?.trash_retention_ms;
        let mut outcome = PurgeOutcome::default();
        let mut seen_now: HashMap<String, u64> = HashMap::new();
        for id in self.file_docs().collect::<Vec<_>>() {
            let mut doomed = Vec::new();
            for fkey in self.file_keys(id, None)? {
                // Bounded work (and change size) per call; the next call purges the rest.
                if doomed.len() >= MAX_PURGE_PER_DOC {
                    break;
                }
                let Some(s) = self.head_state(id, &fkey)? else {
                    continue;
                };
                let (vid, tomb) = s.winner();
                if s.candidates.len() != 1 || !tomb.deleted {
                    continue;
                }
                let key = format!("{id}\u{1f}{fkey}\u{1f}{vid}");
                let first_seen = self.tombstones_seen.get(&key).copied().unwrap_or(mono_ms);
                seen_now.insert(key, first_seen);
                if tomb.created.wall_ms().saturating_add(retention) <= wall_ms
                    && first_seen.saturating_add(retention) <= mono_ms
                {
                    doomed.push(fkey);
                }
            }
            if doomed.is_empty() {
                continue;
            }
            let doc = self.doc(id)?;
            let mut versions = Vec::new();
            let mut tags = Vec::new();
            for fkey in &doomed {
                versions.extend(
                    doc.am
                        .map_range(doc.map("versions"), prefix_range(fkey))
                        .map(|i| i.key.into_owned()),
                );
                tags.extend(
                    doc.am
                        .map_range(doc.map("tags"), prefix_range(fkey))
                        .map(|i| i.key.into_owned()),
                );
            }
            let time = self.clock.tick(wall_ms);
            let ((), commit) = self.commit(id, time, |tx, m| {
                for k in &versions {
                    tx.delete(m.get("versions"), k.as_str())?;
                }
                for k in &tags {
                    tx.delete(m.get("tags"), k.as_str())?;
                }
                for k in &doomed {
                    tx.delete(m.get("heads"), k.as_str())?;
                }
                Ok(())
            })?;
            outcome.files += doomed.len();
            outcome.versions += versions.len();
            outcome.commits.push(commit);
        }
        // Only tombstones that are still lone heads are remembered (bounded by them).
        self.tombstones_seen = seen_now;
        Ok(outcome)
    }
}

/// Checks the owner and tags of a listing.
fn validate_query(owner: &str, tags: &[String]) -> Result<(), MetaError> {
    names::validate_user(owner)?;
    for tag in tags {
        names::validate_tag(tag)?;
    }
    Ok(())
}
