//! The cluster state this chunkserver has served, as the set of metadata store incarnations
//! ("lineage") controllers have told it about. It guards the one destructive call a
//! controller can make, `DeleteChunk`: a delete is refused unless the deleting controller's
//! lineage covers every incarnation this server knows. A controller with an empty or wiped
//! store, or one not yet peered with the cluster whose data lives here, has not seen those
//! incarnations, so it deletes nothing.
//!
//! The set only grows, and only from a controller that already covers it (so a stray new
//! controller cannot make the server refuse the real cluster); the first controller heard
//! from seeds it. It is kept in a small file next to the store, replaced atomically, so a
//! restart keeps the protection. An empty set (a server no controller has answered yet)
//! refuses every delete.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

/// Most incarnations remembered, and the longest id accepted.
pub const MAX_ENTRIES: usize = 4096;
pub const MAX_ID_LEN: usize = 64;
/// File in the data directory.
pub const FILE: &str = "lineage";

/// What `learn` should do with a controller's lineage. Pure.
pub fn adopt(known: &BTreeSet<String>, theirs: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    if theirs.is_empty() || theirs.len() > MAX_ENTRIES || !theirs.is_superset(known) {
        return None;
    }
    (theirs != known).then(|| theirs.clone())
}

/// Why a delete is refused, if it is. Pure.
pub fn refusal(known: &BTreeSet<String>, theirs: &[String]) -> Option<String> {
    if known.is_empty() {
        return Some(
            "this chunkserver has not heard which cluster it serves yet (no controller has \
             answered its heartbeat)"
                .into(),
        );
    }
    let theirs: BTreeSet<&str> = theirs.iter().map(String::as_str).collect();
    known
        .iter()
        .find(|k| !theirs.contains(k.as_str()))
        .map(|k| {
            format!(
                "the deleting controller has not seen metadata store {k}, whose data this \
                 chunkserver holds"
            )
        })
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The persisted lineage of one chunkserver.
#[derive(Debug)]
pub struct Lineage {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    known: RwLock<BTreeSet<String>>,
}

impl Lineage {
    /// A lineage kept in memory only, starting empty (for tests and in-memory servers).
    pub fn in_memory() -> Self {
        Lineage {
            path: None,
            known: RwLock::new(BTreeSet::new()),
        }
    }

    /// Loads the lineage kept in `dir` (empty when there is none yet).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE);
        let known = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    if valid(l) {
                        Ok(l.to_owned())
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: malformed entry {l:?}", path.display()),
                        ))
                    }
                })
                .collect::<io::Result<BTreeSet<String>>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        Ok(Lineage {
            path: Some(path),
            known: RwLock::new(known),
        })
    }

    /// Every incarnation known, sorted.
    pub fn known(&self) -> Vec<String> {
        self.known.read().iter().cloned().collect()
    }

    /// Takes a controller's lineage into account (see the module doc). Answers whether the
    /// known set grew.
    pub fn learn(&self, theirs: &[String]) -> io::Result<bool> {
        if theirs.iter().any(|t| !valid(t)) {
            return Ok(false);
        }
        let theirs: BTreeSet<String> = theirs.iter().cloned().collect();
        let mut known = self.known.write();
        let Some(next) = adopt(&known, &theirs) else {
            return Ok(false);
        };
        self.persist(&next)?;
        *known = next;
        Ok(true)
    }

    /// `None` when a controller with lineage `theirs` may delete here; else why not.
    pub fn refuse_delete(&self, theirs: &[String]) -> Option<String> {
        refusal(&self.known.read(), theirs)
    }

    fn persist(&self, set: &BTreeSet<String>) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for id in set {
            writeln!(f, "{id}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_controller_seeds_and_only_supersets_grow_it() {
        assert_eq!(adopt(&set(&[]), &set(&["x"])), Some(set(&["x"])));
        assert_eq!(
            adopt(&set(&["x"]), &set(&["x", "y"])),
            Some(set(&["x", "y"]))
        );
        // A stray controller that has not seen x cannot change what we know.
        assert_eq!(adopt(&set(&["x"]), &set(&["z"])), None);
        assert_eq!(adopt(&set(&["x"]), &set(&["x"])), None);
        assert_eq!(adopt(&set(&["x"]), &set(&[])), None);
    }

    #[test]
    fn deletes_need_a_lineage_covering_ours() {
        assert!(
            refusal(&set(&[]), &["x".into()]).is_some(),
            "no knowledge: keep"
        );
        assert!(refusal(&set(&["x"]), &["x".into(), "y".into()]).is_none());
        let why = refusal(&set(&["x", "y"]), &["y".into(), "z".into()]).unwrap();
        assert!(why.contains('x'), "{why}");
        assert!(refusal(&set(&["x"]), &[]).is_some());
    }

    #[test]
    fn lineage_survives_a_restart_and_refuses_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lineage::open(dir.path()).unwrap();
        assert!(l.learn(&["abc".into()]).unwrap());
        assert!(!l.learn(&["zzz".into()]).unwrap());
        assert!(l.learn(&["abc".into(), "def".into()]).unwrap());
        drop(l);
        let l = Lineage::open(dir.path()).unwrap();
        assert_eq!(l.known(), ["abc", "def"]);
        assert!(l.refuse_delete(&["abc".into()]).is_some());
        assert!(l.refuse_delete(&["abc".into(), "def".into()]).is_none());
        std::fs::write(dir.path().join(FILE), "ok\nnot valid!\n").unwrap();
        assert!(Lineage::open(dir.path()).is_err());
    }
}
