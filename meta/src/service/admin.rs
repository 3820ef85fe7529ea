//! `AdminService`: operator actions on the cluster's membership and settings.
//!
//! - Drain marks a chunkserver draining; repair copies its chunks elsewhere and retires it
//!   only on proof (see `crate::repair::drain`).
//! - Undrain returns a draining or removed server to active.
//! - ForgetController tells GC to stop waiting for a controller that is gone for good (it is
//!   remembered again as soon as it runs).
//! - SetReplication changes the policy (a node's `--replication` only seeds new clusters).

use std::sync::Arc;

use redcloud_proto::controller as pb;
use redcloud_proto::controller::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::Components;
use super::errors::{self, invalid};
use crate::cluster::ReplicationPolicy;
use crate::record::ChunkserverState;

#[derive(Debug, Clone)]
pub struct AdminApi {
    pub parts: Arc<Components>,
}

impl AdminApi {
    async fn set_state(&self, id: String, state: ChunkserverState) -> Result<(), Status> {
        let clock = self.parts.clock.clone();
        self.parts
            .meta
            .mutate(move |s| {
                let c = s.set_chunkserver_state(&id, state, clock.now_ms())?;
                Ok(((), c.into_iter().collect()))
            })
            .await
            .map_err(errors::status)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.parts.gate.require_admin(req.metadata())?;
        let id = req.into_inner().chunkserver_id;
        tracing::info!(chunkserver = %id, "drain requested");
        self.set_state(id, ChunkserverState::Draining).await?;
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn undrain(
        &self,
        req: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        self.parts.gate.require_admin(req.metadata())?;
        let id = req.into_inner().chunkserver_id;
        tracing::info!(chunkserver = %id, "undrain requested");
        self.set_state(id, ChunkserverState::Active).await?;
        Ok(Response::new(pb::UndrainResponse {}))
    }

    async fn forget_controller(
        &self,
        req: Request<pb::ForgetControllerRequest>,
    ) -> Result<Response<pb::ForgetControllerResponse>, Status> {
        self.parts.gate.require_admin(req.metadata())?;
        let id = req.into_inner().controller_id;
        if self.parts.peers.is_connected(&id) {
            return Err(Status::failed_precondition(format!(
                "controller {id} is connected and running; stop it before forgetting it"
            )));
        }
        tracing::info!(controller = %id, "forgetting controller");
        let clock = self.parts.clock.clone();
        self.parts
            .meta
            .mutate(move |s| {
                let c = s.forget_controller(&id, clock.now_ms())?;
                Ok(((), c.into_iter().collect()))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::ForgetControllerResponse {}))
    }

    async fn set_replication(
        &self,
        req: Request<pb::SetReplicationRequest>,
    ) -> Result<Response<pb::SetReplicationResponse>, Status> {
        self.parts.gate.require_admin(req.metadata())?;
        let text = req.into_inner().policy;
        let policy: ReplicationPolicy = text
            .parse()
            .map_err(|e: crate::error::MetaError| invalid("policy", e))?;
        tracing::info!(%policy, "replication policy set");
        let clock = self.parts.clock.clone();
        self.parts
            .meta
            .mutate(move |s| {
                let c = s.set_replication(policy, clock.now_ms())?;
                Ok(((), vec![c]))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::SetReplicationResponse {}))
    }
}
