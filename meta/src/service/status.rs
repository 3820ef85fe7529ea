//! `Status`: one controller's view of the cluster, in the shape `redcloud status --json`
//! prints (tests and operators rely on the names).

use std::collections::HashSet;

use redcloud_proto::controller as pb;
use tonic::Status;

use super::{Components, errors};
use crate::repair::plan::Health;

/// Everything the status call reads from the metadata store, in one owner job.
struct MetaFacts {
    digest: String,
    controllers: Vec<crate::cluster::ControllerView>,
    files: u64,
    conflicts: u64,
    members: Vec<crate::cluster::ChunkserverView>,
    replication: String,
    lineage: Vec<String>,
    shards: u32,
}

/// A user's own view: their live files and conflicts, nothing about the cluster.
pub async fn user_status(p: &Components, user: String) -> Result<pb::StatusResponse, Status> {
    let (files, conflicts) = p
        .meta
        .call(move |s| -> Result<(u64, u64), crate::error::MetaError> {
            Ok((
                s.list(&user, &[])?.len() as u64,
                s.conflicts(&user)?.len() as u64,
            ))
        })
        .await
        .map_err(errors::stopped)?
        .map_err(errors::status)?;
    Ok(pb::StatusResponse {
        files,
        conflicts,
        scope: "user".into(),
        insecure: !p.gate.secure(),
        ..pb::StatusResponse::default()
    })
}

pub async fn status(p: &Components) -> Result<pb::StatusResponse, Status> {
    let facts = p
        .meta
        .call(|s| -> Result<MetaFacts, crate::error::MetaError> {
            // Both counts come from per-document caches: a status costs a heads comparison
            // per unchanged document, not a read of every file.
            let by_owner = s.conflict_counts()?;
            let mut conflicts = 0;
            for user in s.users()? {
                conflicts += by_owner.get(&user).copied().unwrap_or(0) as u64;
            }
            Ok(MetaFacts {
                digest: hex::encode(s.digest()),
                controllers: s.controllers()?,
                files: s.file_count()? as u64,
                conflicts,
                members: s.chunkservers()?,
                replication: s.settings()?.replication.to_string(),
                lineage: s.lineage()?,
                shards: s.shards(),
            })
        })
        .await
        .map_err(errors::stopped)?
        .map_err(errors::status)?;

    let peers = p.peers.connected_ids();
    let equal_ago = p.peers.last_equal_ago_ms();
    let controllers = facts
        .controllers
        .into_iter()
        .map(|c| pb::ControllerEntry {
            connected: c.node == p.node_id || peers.contains(&c.node),
            last_equal_ms_ago: if c.node == p.node_id {
                0
            } else {
                equal_ago.get(&c.node).map_or(-1, |ms| *ms as i64)
            },
            id: c.node,
            address: c.grpc_addr,
            forgotten: c.forgotten,
        })
        .collect();
    let now = p.clock.mono_ms();
    let mut seen = HashSet::new();
    let mut chunkservers: Vec<pb::ChunkserverStatus> = p.directory.read(|reg| {
        reg.servers()
            .map(|s| {
                seen.insert(s.id.clone());
                pb::ChunkserverStatus {
                    id: s.id.clone(),
                    address: s.address.clone(),
                    zone: s.zone.clone(),
                    state: health_name(reg.health(s, now)).to_owned(),
                    chunks: s.chunks().filter(|c| p.live.contains(c)).count() as u64,
                    used_bytes: s.used_bytes,
                    capacity_bytes: s.capacity_bytes,
                    last_heartbeat_ms: s.last_heartbeat_wall_ms,
                }
            })
            .collect()
    });
    // Members this controller has not heard from since it started.
    for m in facts.members {
        if !seen.contains(&m.id) {
            chunkservers.push(pb::ChunkserverStatus {
                id: m.id,
                address: m.address,
                zone: m.zone,
                state: if m.state == crate::record::ChunkserverState::Removed {
                    "removed".into()
                } else {
                    "failed".into()
                },
                ..Default::default()
            });
        }
    }
    chunkservers.sort_by(|a, b| a.id.cmp(&b.id));
    let r = &p.repair;
    let clock = p.clock.health();
    let g = p.gc.snapshot();
    let gc = pb::GcStatus {
        allowed: g.blocked_by.is_none(),
        blocked_by: g.blocked_by.unwrap_or_default(),
        purge_allowed: g.purge_blocked_by.is_none(),
        purge_blocked_by: g.purge_blocked_by.unwrap_or_default(),
        orphans: g.orphans,
        deleted: p.metrics.gc_deleted.get(),
    };
    Ok(pb::StatusResponse {
        controller: Some(pb::ControllerStatus {
            id: p.node_id.clone(),
            address: p.address.clone(),
            peers,
            metadata_digest: facts.digest,
        }),
        controllers,
        chunkservers,
        chunks: Some(pb::ChunkStats {
            total: p.live.len() as u64,
            under_replicated: r.under_replicated.get(),
            lost: r.lost.get(),
        }),
        files: facts.files,
        conflicts: facts.conflicts,
        scope: "cluster".into(),
        insecure: !p.gate.secure(),
        repair: Some(pb::RepairStats {
            queued: r.queued.get(),
            in_flight: r.in_flight.get(),
            done: r.done.get(),
            failed: r.failed.get(),
        }),
        clock: Some(pb::ClockStatus {
            state: clock.state.name().into(),
            median_offset_ms: clock.median_offset_ms,
            correction_ms: clock.correction_ms,
            witnesses: clock.witnesses as u32,
            max_skew_ms: p.clock.max_skew_ms(),
        }),
        gc: Some(gc),
        workers: p
            .workers
            .snapshot()
            .into_iter()
            .map(|(name, w)| pb::WorkerStatus {
                name: name.into(),
                state: w.state.into(),
                restarts: w.restarts,
                last_error: w.last_error,
            })
            .collect(),
        degraded_writes: p.metrics.degraded_writes.get(),
        replication: facts.replication,
        shards: facts.shards,
        lineage: facts.lineage,
    })
}

pub fn health_name(h: Health) -> &'static str {
    match h {
        Health::Active => "active",
        Health::Draining => "draining",
        Health::Failed => "failed",
        Health::Removed => "removed",
    }
}
