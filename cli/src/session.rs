//! The client's saved session: who is logged in, their token, and the newest write timestamp
//! the client has seen (sent with every write as causal context, so a write made after an
//! acknowledged one wins even through a controller whose clock is behind).
//!
//! Kept in `$REDCLOUD_HOME/session.json` (default `~/.redcloud`), readable only by the user.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub token: String,
    #[serde(default)]
    pub last_write_hlc: u64,
}

/// The directory holding the session (created 0700 on first save).
pub fn home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("REDCLOUD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither REDCLOUD_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".redcloud"))
}

fn path() -> Result<PathBuf> {
    Ok(home()?.join("session.json"))
}

impl Session {
    /// The saved session, or a clear error telling the user to log in.
    pub fn load() -> Result<Session> {
        let p = path()?;
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("not logged in: run `redcloud login USER` first")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt: run `redcloud login USER` again",
                p.display()
            )
        })
    }

    /// Writes the session atomically with mode 0600 in a 0700 directory.
    pub fn save(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = home()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let p = path()?;
        let tmp = dir.join("session.json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// Deletes the saved session (nothing to delete is fine).
    pub fn remove() -> Result<()> {
        let p = path()?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {}", p.display())),
        }
    }

    /// Remembers the newest write timestamp seen, keeping the maximum.
    pub fn observe_write(&mut self, hlc: u64) -> Result<()> {
        if hlc > self.last_write_hlc {
            self.last_write_hlc = hlc;
            self.save()?;
        }
        Ok(())
    }
}
