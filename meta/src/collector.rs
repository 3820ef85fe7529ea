//! The garbage collector worker: purges tombstoned versions older than the trash retention,
//! and deletes orphan chunk copies as [`crate::gc`] plans them.
//!
//! Both fail closed:
//! - the purge runs only while this controller's clock is trusted (it agrees with its peers
//!   and chunkservers, or has been corrected to them; see `crate::skew`), so one controller
//!   with a wrong clock cannot empty everyone's trash;
//! - orphan deletion runs only with proof that this controller's view is the cluster's
//!   ([`crate::proof`]), counts the grace period on the monotonic clock, and every
//!   DeleteChunk carries the grace period as `min_age_ms` and this controller's lineage, so the
//!   chunkserver itself keeps a chunk written or touched more recently, and refuses a
//!   controller that has not seen every metadata store it has served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::clock::NodeClock;
use crate::directory::Directory;
use crate::gc::OrphanTracker;
use crate::handle::MetaHandle;
use crate::live::LiveSet;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::proof;

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

/// What the last GC pass concluded, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcView {
    /// Why orphan deletion may not run, if it may not.
    pub blocked_by: Option<String>,
    /// Why the trash purge may not run, if it may not.
    pub purge_blocked_by: Option<String>,
    pub orphans: u64,
}

#[derive(Debug)]
pub struct GcStatus {
    view: Mutex<GcView>,
}

impl Default for GcStatus {
    fn default() -> Self {
        GcStatus {
            view: Mutex::new(GcView {
                blocked_by: Some("no pass has run yet".into()),
                purge_blocked_by: Some("no pass has run yet".into()),
                orphans: 0,
            }),
        }
    }
}

impl GcStatus {
    pub fn snapshot(&self) -> GcView {
        self.view.lock().clone()
    }
}

/// What the GC worker works with.
#[derive(Debug, Clone)]
pub struct GcParts {
    pub node_id: String,
    pub meta: MetaHandle,
    pub clock: Arc<NodeClock>,
    pub directory: Arc<Directory>,
    pub peers: Arc<Peers>,
    pub live: Arc<LiveSet>,
    pub status: Arc<GcStatus>,
    pub metrics: Arc<Metrics>,
    pub chunks: crate::chunk_client::Dialer,
}

/// Runs GC passes until `shutdown` turns true.
pub async fn run(parts: GcParts, config: GcConfig, mut shutdown: watch::Receiver<bool>) {
    let mut tracker = OrphanTracker::default();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => pass(&parts, &config, &mut tracker).await,
        }
    }
}

#[tracing::instrument(skip_all, level = "debug")]
async fn pass(p: &GcParts, config: &GcConfig, tracker: &mut OrphanTracker) {
    let purge_blocked_by = purge(p).await;

    let facts = match proof::gather(&p.meta, &p.live).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "gc: cannot read the metadata facts");
            *p.status.view.lock() = GcView {
                blocked_by: Some(format!("cannot read metadata: {e}")),
                purge_blocked_by,
                orphans: tracker.len() as u64,
            };
            return;
        }
    };
    let now = p.clock.mono_ms();
    let verdict = facts.check(
        &p.node_id,
        &p.peers,
        &p.directory,
        now,
        config.sync_freshness.as_millis() as u64,
    );
    if let Err(why) = &verdict {
        tracing::debug!(reason = %why, "gc: deleting nothing");
    }
    let controllers = p.peers.visible_with(&p.node_id);
    let (deletions, addresses) = p.directory.read(|reg| {
        let input = crate::gc::Input {
            holders: reg.holders(),
            now_ms: now,
            grace_ms: config.grace_ms,
            allowed: verdict.is_ok(),
            me: &p.node_id,
            controllers: &controllers,
            max_deletions: config.max_deletions,
        };
        let d = tracker.plan(&input, |c| {
            facts.live.chunks.contains_key(c) || p.live.contains(c)
        });
        let addresses: std::collections::HashMap<String, String> = reg
            .servers()
            .map(|s| (s.id.clone(), s.address.clone()))
            .collect();
        (d, addresses)
    });
    *p.status.view.lock() = GcView {
        blocked_by: verdict.err().map(|b| b.to_string()),
        purge_blocked_by,
        orphans: tracker.len() as u64,
    };
    let started = Instant::now();
    for d in deletions {
        let Some(addr) = addresses.get(&d.server) else {
            continue;
        };
        match delete(&p.chunks, addr, &d.chunk, config.grace_ms, &facts.lineage).await {
            Ok(true) => {
                p.metrics.gc_deleted.inc();
                p.directory.note_removed(&d.server, &d.chunk);
            }
            Ok(false) => {}
            Err(e) => {
                p.metrics.gc_refused.inc();
                tracing::debug!(server = %d.server, error = %e, "gc delete refused or failed");
            }
        }
        if started.elapsed() > config.interval {
            break;
        }
    }
}

/// Whether the trash purge may run, from a fresh clock evaluation and who else exists.
///
/// Pure. A skewed clock never purges. An unknown clock (no fresh witness) purges only when
/// this controller is alone in the cluster document (no other controller that is not
/// forgotten, no chunkserver): a controller that has peers but cannot hear from them right
/// now cannot check its clock against theirs, and a wrong clock would empty everyone's trash
/// once its purge replicates.
pub fn purge_gate(
    health: &crate::skew::ClockHealth,
    other_controllers: usize,
    chunkservers: usize,
) -> Result<(), String> {
    use crate::skew::ClockState;
    match health.state {
        ClockState::Ok | ClockState::Corrected => Ok(()),
        ClockState::Unknown if other_controllers == 0 && chunkservers == 0 => Ok(()),
        ClockState::Unknown => Err(format!(
            "clock unknown: no fresh reading from the {other_controllers} other controller(s)              and {chunkservers} chunkserver(s) to check it against"
        )),
        ClockState::Skewed => Err(format!(
            "clock skewed: witnesses read {} ms from ours and disagree on who is right",
            health.median_offset_ms
        )),
    }
}

/// Purges expired trash when the clock is trusted; answers why not otherwise.
async fn purge(p: &GcParts) -> Option<String> {
    // Evaluate now, not the watcher's last reading: a sample that expired since then must
    // not leave a stale "ok" in force.
    let health = p.clock.evaluate();
    let me = p.node_id.clone();
    let others = p
        .meta
        .call(move |s| {
            s.controllers()
                .map(|cs| cs.iter().filter(|c| c.node != me && !c.forgotten).count())
        })
        .await;
    let others = match others {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Some(format!("cannot read the controllers: {e}")),
        Err(e) => return Some(format!("cannot read the controllers: {e}")),
    };
    let chunkservers = p.directory.read(|reg| reg.servers().count());
    if let Err(why) = purge_gate(&health, others, chunkservers) {
        p.metrics.purges_skipped_clock.inc();
        tracing::warn!(reason = %why, "trash purge skipped");
        return Some(why);
    }
    let clock = p.clock.clone();
    let purged = p
        .meta
        .mutate(move |s| {
            let out = s.purge_expired_at(clock.now_ms(), clock.mono_ms())?;
            Ok(((out.files, out.versions), out.commits))
        })
        .await;
    match purged {
        Ok((files, versions)) => {
            if versions > 0 {
                tracing::info!(files, versions, "purged expired versions");
            }
            None
        }
        Err(e) => Some(format!("purge failed: {e}")),
    }
}

async fn delete(
    chunks: &crate::chunk_client::Dialer,
    addr: &str,
    chunk: &[u8; 32],
    min_age_ms: u64,
    lineage: &[String],
) -> anyhow::Result<bool> {
    let mut client = chunks.connect(addr).await?;
    let resp = client
        .delete_chunk(redcloud_proto::chunk::DeleteChunkRequest {
            id: Bytes::copy_from_slice(chunk),
            min_age_ms,
            lineage: lineage.to_vec(),
        })
        .await?
        .into_inner();
    Ok(resp.existed && !resp.kept_young)
}

#[cfg(test)]
mod tests {
    use super::purge_gate;
    use crate::skew::{ClockHealth, ClockState};

    fn health(state: ClockState) -> ClockHealth {
        ClockHealth {
            state,
            median_offset_ms: 0,
            correction_ms: 0,
            witnesses: 0,
            agreeing: 0,
        }
    }

    #[test]
    fn only_a_checked_clock_or_a_lone_controller_purges() {
        assert!(purge_gate(&health(ClockState::Ok), 2, 3).is_ok());
        assert!(purge_gate(&health(ClockState::Corrected), 2, 3).is_ok());
        assert!(purge_gate(&health(ClockState::Unknown), 0, 0).is_ok());
        // Peers exist but none answered lately: the clock cannot be checked.
        assert!(purge_gate(&health(ClockState::Unknown), 1, 0).is_err());
        assert!(purge_gate(&health(ClockState::Unknown), 0, 1).is_err());
        assert!(purge_gate(&health(ClockState::Skewed), 0, 0).is_err());
    }
}
