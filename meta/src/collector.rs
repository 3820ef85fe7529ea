//! The garbage collector worker: deletes orphan chunk copies as [`crate::gc`] plans them, and
//! purges tombstoned versions older than the trash retention.
//!
//! It deletes nothing while this controller is out of sync with any controller it knows, and
//! every DeleteChunk carries the grace period as `min_age_ms`, so the chunkserver itself keeps
//! a chunk written (or re-written by an upload) more recently than that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock::wall_ms;
use crate::gc::{self, OrphanTracker};
use crate::service::Shared;

#[derive(Debug, Clone)]
pub struct GcConfig {
    pub interval: Duration,
    /// How long a chunk must stay unreferenced before it is deleted.
    pub grace_ms: u64,
    /// Deletions ordered per pass.
    pub max_deletions: usize,
    /// A peer counts as in sync if its documents equalled ours this recently.
    pub sync_freshness: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            grace_ms: 3_600_000,
            max_deletions: 1_000,
            sync_freshness: Duration::from_secs(10),
        }
    }
}

/// Runs GC passes until `shutdown` turns true.
pub async fn run(shared: Arc<Shared>, config: GcConfig, mut shutdown: watch::Receiver<bool>) {
    let mut tracker = OrphanTracker::default();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => pass(&shared, &config, &mut tracker).await,
        }
    }
}

#[tracing::instrument(skip_all, level = "debug")]
async fn pass(shared: &Arc<Shared>, config: &GcConfig, tracker: &mut OrphanTracker) {
    // Trash first: purged versions turn their chunks into orphans for later passes.
    let purged = shared
        .meta
        .mutate(|s| {
            let out = s.purge_expired(wall_ms())?;
            Ok(((out.files, out.versions), out.commits))
        })
        .await;
    if let Ok((files, versions)) = purged
        && versions > 0
    {
        tracing::info!(files, versions, "purged expired versions");
    }

    let known = match shared.meta.call(|s| s.controllers()).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let in_sync = {
        let peers = shared.peers.lock();
        known.iter().filter(|c| c.node != shared.node_id).all(|c| {
            peers
                .last_equal
                .iter()
                .any(|(p, at)| p.to_string() == c.node && at.elapsed() <= config.sync_freshness)
        })
    };
    let mut controllers: Vec<String> = shared
        .peers
        .lock()
        .connected
        .iter()
        .map(|p| p.to_string())
        .collect();
    controllers.push(shared.node_id.clone());
    let (deletions, addresses) = {
        let reg = shared.registry.lock();
        let input = gc::Input {
            holders: reg.holders(),
            now_ms: wall_ms(),
            grace_ms: config.grace_ms,
            in_sync,
            me: &shared.node_id,
            controllers: &controllers,
            max_deletions: config.max_deletions,
        };
        let d = tracker.plan(&input, |c| shared.live.contains(c));
        let addresses: std::collections::HashMap<String, String> = reg
            .servers()
            .map(|s| (s.id.clone(), s.address.clone()))
            .collect();
        (d, addresses)
    };
    let started = Instant::now();
    for d in deletions {
        let Some(addr) = addresses.get(&d.server) else {
            continue;
        };
        match delete(addr, &d.chunk, config.grace_ms).await {
            Ok(true) => {
                shared.metrics.gc_deleted.inc();
                shared.registry.lock().note_removed(&d.server, &d.chunk);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(server = %d.server, error = %e, "gc delete failed"),
        }
        if started.elapsed() > config.interval {
            break;
        }
    }
}

async fn delete(addr: &str, chunk: &[u8; 32], min_age_ms: u64) -> anyhow::Result<bool> {
    let mut client = crate::chunk_client::connect(addr).await?;
    let resp = client
        .delete_chunk(redcloud_proto::chunk::DeleteChunkRequest {
            id: Bytes::copy_from_slice(chunk),
            min_age_ms,
        })
        .await?
        .into_inner();
    Ok(resp.existed && !resp.kept_young)
}
