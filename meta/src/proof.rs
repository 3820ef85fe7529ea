//! Whether this controller's view of the metadata is proven to be the cluster's: the
//! precondition of every destructive action (deleting a chunk, retiring a chunkserver).
//!
//! [`gather`] reads, in one metadata job, the digest, membership, lineage, settings and a live
//! chunk set stamped with that same digest; [`Facts::check`] weighs them with what replication
//! knows about peers and what chunkservers report (see [`crate::gc::may_delete`] for the rules).

use std::sync::Arc;

use crate::cluster::{ChunkserverView, Settings};
use crate::directory::Directory;
use crate::gc::{self, Blocked};
use crate::handle::MetaHandle;
use crate::live::{LiveSet, LiveSnapshot};
use crate::peers::Peers;

/// What one metadata job read.
#[derive(Debug)]
pub struct Facts {
    pub digest: [u8; 32],
    /// Member controllers and whether each is forgotten.
    pub members: Vec<(String, bool)>,
    pub lineage: Vec<String>,
    pub chunkservers: Vec<ChunkserverView>,
    pub settings: Settings,
    /// Live chunks computed from exactly `digest`.
    pub live: Arc<LiveSnapshot>,
}

/// Reads the facts in one metadata job, recomputing the live set only if the digest moved.
pub async fn gather(meta: &MetaHandle, live: &LiveSet) -> Result<Facts, String> {
    let cached = live.snapshot();
    let stamp = cached.digest;
    let generation = live.begin_refresh();
    let read = meta
        .call(move |s| -> Result<_, crate::error::MetaError> {
            let digest = s.digest();
            let members = s
                .controllers()?
                .into_iter()
                .map(|c| (c.node, c.forgotten))
                .collect();
            let chunks = if Some(digest) == stamp {
                None
            } else {
                Some(s.live_chunks()?)
            };
            Ok((
                digest,
                members,
                s.lineage()?,
                s.chunkservers()?,
                s.settings()?,
                chunks,
            ))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (digest, members, lineage, chunkservers, settings, chunks) = read;
    let snapshot = match chunks {
        None => cached,
        Some(c) => live.install(
            LiveSnapshot {
                chunks: c.into_iter().collect(),
                digest: Some(digest),
            },
            generation,
        ),
    };
    Ok(Facts {
        digest,
        members,
        lineage,
        chunkservers,
        settings,
        live: snapshot,
    })
}

impl Facts {
    /// `Ok` when this controller may take destructive action (see [`gc::may_delete`]).
    pub fn check(
        &self,
        me: &str,
        peers: &Peers,
        directory: &Directory,
        now_mono: u64,
        freshness_ms: u64,
    ) -> Result<(), Blocked> {
        let connected = peers.connected_ids();
        let equal = peers.last_equal_ago_ms();
        let reports = directory.live_lineages(now_mono);
        gc::may_delete(&gc::Proof {
            me,
            members: &self.members,
            connected: &connected,
            last_equal_ago_ms: &equal,
            freshness_ms,
            lineage: &self.lineage,
            chunkserver_lineages: &reports,
            live_digest: self.live.digest,
            current_digest: self.digest,
        })
    }
}
