//! `RegistryService`: chunkserver heartbeats and draining.
//!
//! A heartbeat updates the soft-state [`crate::registry::Registry`]; it writes to the cluster
//! document only when a chunkserver is new or its address or zone changed, so documents never
//! grow with heartbeats. When the registry cannot explain a server's inventory digest, the
//! controller pulls the full inventory (ListChunks) in the background.

use std::sync::Arc;

use futures::StreamExt;
use redcloud_proto::controller as pb;
use redcloud_proto::controller::registry_service_server::RegistryService;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::chunk_hash;
use super::errors::{self, invalid};
use crate::clock::wall_ms;
use crate::record::{ChunkHash, ChunkserverState};
use crate::registry::Report;

/// Inventory page size asked of chunkservers.
const INVENTORY_PAGE: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct RegistryApi {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let shared = &self.shared;
        shared.metrics.heartbeats.inc();
        let r = req.into_inner();
        if r.id.is_empty() {
            return Err(invalid("id", "empty chunkserver id"));
        }
        if r.address.is_empty() {
            return Err(invalid("address", "empty chunkserver address"));
        }
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
        };
        let want_inventory = shared.registry.lock().heartbeat(report, wall_ms());

        let member = (r.address.clone(), r.zone.clone());
        let changed = shared.members.lock().get(&r.id) != Some(&member);
        if changed {
            let (id, address, zone) = (r.id.clone(), r.address.clone(), r.zone.clone());
            let written = shared
                .meta
                .mutate(move |s| {
                    let c = s.upsert_chunkserver(&id, &address, &zone, wall_ms())?;
                    Ok(((), c.into_iter().collect()))
                })
                .await;
            match written {
                Ok(()) => {
                    shared.members.lock().insert(r.id.clone(), member);
                }
                Err(e) => tracing::warn!(id = %r.id, error = %e, "cannot record chunkserver"),
            }
        }
        if want_inventory && shared.pulling.lock().insert(r.id.clone()) {
            tokio::spawn(pull_inventory(
                shared.clone(),
                r.id.clone(),
                r.address.clone(),
            ));
        }
        let controllers = shared
            .meta
            .call(|s| s.controllers())
            .await
            .map_err(errors::stopped)?
            .map_err(errors::status)?
            .into_iter()
            .map(|c| c.grpc_addr)
            .collect();
        Ok(Response::new(pb::HeartbeatResponse {
            controllers,
            inventory_requested: want_inventory,
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let id = req.into_inner().chunkserver_id;
        self.shared
            .meta
            .mutate(move |s| {
                let c = s.set_chunkserver_state(&id, ChunkserverState::Draining, wall_ms())?;
                Ok(((), c.into_iter().collect()))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::DrainResponse {}))
    }
}

/// Replaces the registry's view of one server's inventory with a full listing.
async fn pull_inventory(shared: Arc<Shared>, id: String, address: String) {
    match list_all(&address).await {
        Ok(ids) => {
            shared.metrics.inventory_pulls.inc();
            shared.registry.lock().replace_inventory(&id, ids);
        }
        Err(e) => tracing::warn!(%id, %address, error = %e, "inventory pull failed"),
    }
    shared.pulling.lock().remove(&id);
}

async fn list_all(address: &str) -> anyhow::Result<Vec<ChunkHash>> {
    let mut client = crate::chunk_client::connect(address).await?;
    let req = redcloud_proto::chunk::ListChunksRequest {
        after: bytes::Bytes::new(),
        page_size: INVENTORY_PAGE,
        limit: 0,
    };
    let mut pages = client.list_chunks(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        for c in page?.chunks {
            let id: ChunkHash = c.id[..]
                .try_into()
                .map_err(|_| anyhow::anyhow!("{address} listed a malformed chunk id"))?;
            out.push(id);
        }
    }
    Ok(out)
}
