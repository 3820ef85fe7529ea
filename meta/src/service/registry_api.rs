//! `RegistryService`: chunkserver heartbeats.
//!
//! A heartbeat updates the soft-state [`crate::directory::Directory`]; it writes to the cluster
//! document only when a chunkserver is new or its address or zone changed, so documents never
//! grow with heartbeats. When the registry cannot explain a server's inventory digest, the
//! controller pulls the full inventory (ListChunks) in the background. Every field is checked
//! for size before anything is copied. The answer carries every controller's address and this
//! controller's lineage; the chunkserver's wall clock in the request is a clock-skew witness.

use std::sync::Arc;

use futures::StreamExt;
use redcloud_proto::controller as pb;
use redcloud_proto::controller::registry_service_server::RegistryService;
use tonic::{Request, Response, Status};

use super::Components;
use super::convert::chunk_hash;
use super::errors::{self, invalid};
use crate::record::ChunkHash;
use crate::registry::Report;

/// Inventory page size asked of chunkservers.
const INVENTORY_PAGE: u32 = 10_000;
/// Most chunk ids one heartbeat may add or remove.
pub const MAX_HEARTBEAT_DELTAS: usize = 100_000;
/// Most lineage entries a heartbeat may carry, and their longest id.
pub const MAX_LINEAGE: usize = 4096;
const MAX_LINEAGE_ID: usize = 64;
const MAX_ID: usize = 128;
const MAX_ADDRESS: usize = crate::cluster::MAX_ADDRESS_BYTES;
const MAX_ZONE: usize = crate::names::MAX_NAME_BYTES;

#[derive(Debug, Clone)]
pub struct RegistryApi {
    pub parts: Arc<Components>,
}

/// Rejects oversized fields before anything is copied.
fn check_sizes(r: &pb::HeartbeatRequest) -> Result<(), Status> {
    let too_long = |field: &str, len: usize, max: usize| {
        Err(invalid(field, format!("{len} bytes, more than {max}")))
    };
    if r.id.is_empty() {
        return Err(invalid("id", "empty chunkserver id"));
    }
    if r.id.len() > MAX_ID {
        return too_long("id", r.id.len(), MAX_ID);
    }
    if r.address.is_empty() {
        return Err(invalid("address", "empty chunkserver address"));
    }
    if r.address.len() > MAX_ADDRESS {
        return too_long("address", r.address.len(), MAX_ADDRESS);
    }
    if r.zone.len() > MAX_ZONE {
        return too_long("zone", r.zone.len(), MAX_ZONE);
    }
    for (field, n) in [("added", r.added.len()), ("removed", r.removed.len())] {
        if n > MAX_HEARTBEAT_DELTAS {
            return Err(invalid(
                field,
                format!("{n} ids, more than {MAX_HEARTBEAT_DELTAS}"),
            ));
        }
    }
    if r.lineage.len() > MAX_LINEAGE {
        return Err(invalid(
            "lineage",
            format!("{} entries, more than {MAX_LINEAGE}", r.lineage.len()),
        ));
    }
    if let Some(l) = r.lineage.iter().find(|l| l.len() > MAX_LINEAGE_ID) {
        return too_long("lineage", l.len(), MAX_LINEAGE_ID);
    }
    Ok(())
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let p = &self.parts;
        p.gate.require_node(req.metadata())?;
        p.metrics.heartbeats.inc();
        let r = req.into_inner();
        check_sizes(&r)?;
        let received_raw = p.clock.raw_ms();
        let digest: [u8; 32] = r.inventory_digest[..]
            .try_into()
            .map_err(|_| invalid("inventory_digest", "must be 32 bytes"))?;
        let ids = |v: &[bytes::Bytes], field| -> Result<Vec<ChunkHash>, Status> {
            v.iter().map(|b| chunk_hash(b, field)).collect()
        };
        let report = Report {
            id: r.id.clone(),
            address: r.address.clone(),
            zone: r.zone.clone(),
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            chunk_count: r.chunk_count,
            digest,
            added: ids(&r.added, "added")?,
            removed: ids(&r.removed, "removed")?,
            lineage: r.lineage.clone(),
            wall_ms: r.wall_ms,
        };
        if r.wall_ms > 0 {
            p.clock
                .witness(&format!("cs:{}", r.id), r.wall_ms, received_raw);
        }
        let want_inventory = p.directory.heartbeat(report, p.clock.mono_ms());

        if p.directory.member_changed(&r.id, &r.address, &r.zone) {
            let (id, address, zone) = (r.id.clone(), r.address.clone(), r.zone.clone());
            let clock = p.clock.clone();
            let written = p
                .meta
                .mutate(move |s| {
                    let c = s.upsert_chunkserver(&id, &address, &zone, clock.now_ms())?;
                    Ok(((), c.into_iter().collect()))
                })
                .await;
            match written {
                Ok(()) => p.directory.member_written(&r.id, &r.address, &r.zone),
                Err(e) => tracing::warn!(id = %r.id, error = %e, "cannot record chunkserver"),
            }
        }
        if want_inventory && p.directory.begin_pull(&r.id) {
            tokio::spawn(pull_inventory(p.clone(), r.id.clone(), r.address.clone()));
        }
        let (controllers, lineage) = p
            .meta
            .call(|s| -> Result<_, crate::error::MetaError> {
                let controllers = s
                    .controllers()?
                    .into_iter()
                    .filter(|c| !c.forgotten)
                    .map(|c| c.grpc_addr)
                    .collect();
                Ok((controllers, s.lineage()?))
            })
            .await
            .map_err(errors::stopped)?
            .map_err(errors::status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            controllers,
            inventory_requested: want_inventory,
            controller_id: p.node_id.clone(),
            lineage,
        }))
    }
}

/// Longest wait for the next page of a chunkserver's inventory.
const INVENTORY_PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Replaces the directory's view of one server's inventory with a full listing.
async fn pull_inventory(parts: Arc<Components>, id: String, address: String) {
    let inventory = match list_all(&parts.chunks, &address).await {
        Ok(ids) => {
            parts.metrics.inventory_pulls.inc();
            Some(ids)
        }
        Err(e) => {
            tracing::warn!(%id, %address, error = %e, "inventory pull failed");
            None
        }
    };
    parts.directory.end_pull(&id, inventory);
}

async fn list_all(
    chunks: &crate::chunk_client::Dialer,
    address: &str,
) -> anyhow::Result<Vec<ChunkHash>> {
    let mut client = chunks.connect(address).await?;
    let req = redcloud_proto::chunk::ListChunksRequest {
        after: bytes::Bytes::new(),
        page_size: INVENTORY_PAGE,
        limit: 0,
    };
    let mut pages = client.list_chunks(req).await?.into_inner();
    let mut out = Vec::new();
    // A server that stops sending pages is given up on (the pull is retried later), so a
    // stalled listing never pins the pull slot.
    while let Some(page) = tokio::time::timeout(INVENTORY_PAGE_TIMEOUT, pages.next())
        .await
        .map_err(|_| {
            anyhow::anyhow!("{address} sent no inventory page for {INVENTORY_PAGE_TIMEOUT:?}")
        })?
    {
        for c in page?.chunks {
            let id: ChunkHash = c.id[..]
                .try_into()
                .map_err(|_| anyhow::anyhow!("{address} listed a malformed chunk id"))?;
            out.push(id);
        }
    }
    Ok(out)
}
