//! Many new versions in few changes: [`MetaStore::add_versions`], what CommitFiles runs.
//!
//! Adding files one by one costs one Automerge change each: a transaction, a persist (the
//! change's bytes, a RocksDB write, the derived state's parse of them) and, on every peer,
//! one more change to receive, apply and keep. A batch puts the new heads of the files of one
//! document in one change instead, up to [`MAX_FILES_PER_CHANGE`] files and about
//! [`MAX_CHANGE_BYTES`], so the change still fits one gossip message.
//!
//! Each file is judged as [`MetaStore::add_version`] judges it, in the order given, and a file
//! refused holds back no other. A name given twice gets two versions, the second succeeding
//! the first, as two adds one after the other would: the document's open change is written
//! before the second reads the file's head.

use std::collections::{BTreeMap, HashSet};

use super::{FileView, NewHead, NewVersion};
use crate::document::DocId;
use crate::error::MetaError;
use crate::hlc::Timestamp;
use crate::names::file_key;
use crate::store::{Commit, MetaStore};

/// Most files whose new heads share one change.
pub const MAX_FILES_PER_CHANGE: usize = 128;
/// A change is closed once the records and keys it puts reach this many bytes (the gossip
/// limit is 64 KiB).
pub const MAX_CHANGE_BYTES: usize = 32 << 10;

/// One file of a batch: its name, the new version and the client's causal context.
pub type NewFile = (String, NewVersion, Option<Timestamp>);

/// The new heads of one document, waiting to be written as one change.
#[derive(Default)]
struct Open {
    /// Index in the batch, file name, head.
    heads: Vec<(usize, String, NewHead)>,
    fkeys: HashSet<String>,
    bytes: usize,
}

impl MetaStore {
    /// Adds a new version of each of `files` of `owner`, as [`MetaStore::add_version`] would
    /// one after the other, writing the files of one document in one change. Answers each
    /// file in order (the file as it stands once its version is written, or why it was not),
    /// and the commits made.
    pub fn add_versions(
        &mut self,
        owner: &str,
        files: Vec<NewFile>,
        wall_ms: u64,
    ) -> (Vec<Result<FileView, MetaError>>, Vec<Commit>) {
        let mut out: Vec<Option<Result<FileView, MetaError>>> = Vec::new();
        out.resize_with(files.len(), || None);
        let mut commits = Vec::new();
        let mut open: BTreeMap<DocId, Open> = BTreeMap::new();
        for (i, (name, version, after)) in files.into_iter().enumerate() {
            if let Err(e) = self.check_new_version(owner, &name, &version) {
                out[i] = Some(Err(e));
                continue;
            }
            let id = self.file_doc(owner, &name);
            let fkey = file_key(owner, &name);
            // Named twice: the first version is written before the second reads the head.
            if open.get(&id).is_some_and(|o| o.fkeys.contains(&fkey)) {
                let o = open.remove(&id).expect("checked above");
                self.write_heads(id, o, &mut out, &mut commits);
            }
            let head = match self.prepare_head(owner, &name, version, after, wall_ms) {
                Ok(head) => head,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let o = open.entry(id).or_default();
            o.bytes += head.size();
            o.fkeys.insert(fkey);
            o.heads.push((i, name, head));
            if o.heads.len() >= MAX_FILES_PER_CHANGE || o.bytes >= MAX_CHANGE_BYTES {
                let o = open.remove(&id).expect("just added");
                self.write_heads(id, o, &mut out, &mut commits);
            }
        }
        for (id, o) in std::mem::take(&mut open) {
            self.write_heads(id, o, &mut out, &mut commits);
        }
        let answers = out
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(MetaError::Internal {
                        doc: "files".into(),
                        reason: "a file of a batch was left unanswered".into(),
                    })
                })
            })
            .collect();
        (answers, commits)
    }

    /// Writes the heads of `o` in one change of `id`, and answers their files.
    fn write_heads(
        &mut self,
        id: DocId,
        o: Open,
        out: &mut [Option<Result<FileView, MetaError>>],
        commits: &mut Vec<Commit>,
    ) {
        // Timestamps were taken in order, so the last is the latest: the change's time.
        let Some(time) = o.heads.iter().map(|(_, _, h)| h.time).max() else {
            return;
        };
        let written = self.commit(id, time, |tx, m| {
            o.heads.iter().try_for_each(|(_, _, head)| head.put(tx, m))
        });
        match written {
            Ok(((), commit)) => {
                commits.push(commit);
                // A local put on `heads` replaces every value this replica has, so the new
                // version is the file's only head candidate: only its tags need reading.
                for (i, name, head) in o.heads {
                    let file = self.tags_of(id, &head.fkey).map(|tags| FileView {
                        name,
                        head: head.view,
                        tags,
                        conflicted: false,
                    });
                    out[i] = Some(file);
                }
            }
            Err(e) => {
                for (i, _, _) in &o.heads {
                    out[*i] = Some(Err(e.clone()));
                }
            }
        }
    }
}
