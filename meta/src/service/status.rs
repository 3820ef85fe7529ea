//! `Status`: one controller's view of the cluster, in the shape `redcloud status --json`
//! prints (tests and operators rely on the names).

use std::collections::HashSet;

use redcloud_proto::controller as pb;
use tonic::Status;

use super::{Shared, errors, load};
use crate::clock::wall_ms;
use crate::repair::plan::Health;

/// Everything the status call reads from the metadata store, in one owner job.
struct MetaFacts {
    digest: String,
    controllers: Vec<pb::ControllerEntry>,
    files: u64,
    conflicts: u64,
    members: Vec<(String, String, String)>,
}

pub async fn status(shared: &Shared) -> Result<pb::StatusResponse, Status> {
    let facts = shared
        .meta
        .call(|s| -> Result<MetaFacts, crate::error::MetaError> {
            let mut conflicts = 0;
            for user in s.users()? {
                conflicts += s.conflicts(&user)?.len() as u64;
            }
            Ok(MetaFacts {
                digest: hex::encode(s.digest()),
                controllers: s
                    .controllers()?
                    .into_iter()
                    .map(|c| pb::ControllerEntry {
                        id: c.node,
                        address: c.grpc_addr,
                    })
                    .collect(),
                files: s.file_count()? as u64,
                conflicts,
                members: s
                    .chunkservers()?
                    .into_iter()
                    .map(|c| (c.id, c.address, c.zone))
                    .collect(),
            })
        })
        .await
        .map_err(errors::stopped)?
        .map_err(errors::status)?;

    let peers: Vec<String> = shared
        .peers
        .lock()
        .connected
        .iter()
        .map(|p| p.to_string())
        .collect();
    let live = shared.live.merged();
    let now = wall_ms();
    let reg = shared.registry.lock();
    let mut seen = HashSet::new();
    let mut chunkservers: Vec<pb::ChunkserverStatus> = reg
        .servers()
        .map(|s| {
            seen.insert(s.id.clone());
            pb::ChunkserverStatus {
                id: s.id.clone(),
                address: s.address.clone(),
                zone: s.zone.clone(),
                state: health_name(reg.health(s, now)).to_owned(),
                chunks: live.keys().filter(|c| s.holds(c)).count() as u64,
                used_bytes: s.used_bytes,
                capacity_bytes: s.capacity_bytes,
                last_heartbeat_ms: s.last_heartbeat_ms,
            }
        })
        .collect();
    // Members this controller has not heard from since it started.
    for (id, address, zone) in facts.members {
        if !seen.contains(&id) {
            chunkservers.push(pb::ChunkserverStatus {
                id,
                address,
                zone,
                state: "failed".into(),
                ..Default::default()
            });
        }
    }
    chunkservers.sort_by(|a, b| a.id.cmp(&b.id));
    let r = &shared.repair;
    Ok(pb::StatusResponse {
        controller: Some(pb::ControllerStatus {
            id: shared.node_id.clone(),
            address: shared.address.clone(),
            peers,
            metadata_digest: facts.digest,
        }),
        controllers: facts.controllers,
        chunkservers,
        chunks: Some(pb::ChunkStats {
            total: live.len() as u64,
            under_replicated: load(&r.under_replicated),
            lost: load(&r.lost),
        }),
        files: facts.files,
        conflicts: facts.conflicts,
        repair: Some(pb::RepairStats {
            queued: load(&r.queued),
            in_flight: load(&r.in_flight),
            done: load(&r.done),
            failed: load(&r.failed),
        }),
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
