//! The controller's gRPC services: the client API (`ControllerService`) here, the chunkserver
//! registry (`RegistryService`) in [`registry_api`], and `Status` in [`status`].
//!
//! Every call but Register and Login carries a bearer token; the user it names is the owner of
//! every file the call reads or changes, so a user only ever sees their own files. Metadata
//! work goes through the [`MetaHandle`] (which replicates every commit); chunk locations come
//! from the soft-state [`Registry`].

pub mod convert;
pub mod errors;
pub mod registry_api;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redcloud_proto::controller as pb;
use redcloud_proto::controller::controller_service_server::ControllerService;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::clock::wall_ms;
use crate::cluster::Secret;
use crate::files::{FileView, NewVersion};
use crate::handle::MetaHandle;
use crate::hlc::Timestamp;
use crate::metrics::Metrics;
use crate::placement::{self, Candidate};
use crate::record::ChunkHash;
use crate::registry::Registry;
use crate::repair::plan::Health;
use crate::replication::SharedPeers;
use convert::{chunk_hash, file_info, version_info};
use errors::invalid;

/// Most chunks one PlanUpload or CommitFile may name (a 400 GiB file at 4 MiB chunks).
pub const MAX_CHUNKS_PER_CALL: usize = 100_000;
/// How long CommitFile waits for chunkservers to confirm chunks it has not heard about.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Progress counters of the repair loop, shown by `status`.
#[derive(Debug, Default)]
pub struct RepairCounters {
    pub queued: AtomicU64,
    pub in_flight: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub total_chunks: AtomicU64,
    pub under_replicated: AtomicU64,
    pub lost: AtomicU64,
}

/// Settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub write_quorum: u32,
    pub token_ttl_ms: u64,
}

/// State shared by the services and the background workers of one controller.
#[derive(Debug)]
pub struct Shared {
    pub node_id: String,
    /// Advertised gRPC address.
    pub address: String,
    pub meta: MetaHandle,
    pub registry: Mutex<Registry>,
    pub peers: SharedPeers,
    pub metrics: Arc<Metrics>,
    pub settings: ApiSettings,
    /// Token keys from the cluster document, refreshed when a token names an unknown key.
    pub secrets: RwLock<Vec<Secret>>,
    /// The key this controller signs with.
    pub signing: Secret,
    /// Every chunk referenced by a retained version (refreshed by the repair loop, extended
    /// by commits).
    pub live: crate::live::LiveChunks,
    pub repair: RepairCounters,
    /// Chunkserver membership as last written to the cluster document (id -> address, zone),
    /// so heartbeats only write when something changed.
    pub members: Mutex<HashMap<String, (String, String)>>,
    /// Servers whose inventory is being pulled.
    pub pulling: Mutex<HashSet<String>>,
}

/// The client API.
#[derive(Debug, Clone)]
pub struct Api {
    pub shared: Arc<Shared>,
}

impl Shared {
    /// Runs a query on the metadata owner and maps its errors to statuses.
    pub async fn read<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&mut crate::store::MetaStore) -> Result<R, crate::error::MetaError>
            + Send
            + 'static,
    {
        self.meta
            .call(f)
            .await
            .map_err(errors::stopped)?
            .map_err(errors::status)
    }

    /// The user named by the request's bearer token.
    pub async fn user<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing token: log in first"))?;
        let now = wall_ms();
        let check = |secrets: &[Secret]| {
            auth::verify(
                token,
                secrets.iter().map(|s| (s.id.as_str(), &s.key[..])),
                now,
            )
        };
        let first = check(&self.secrets.read());
        match first {
            Ok(c) => Ok(c.user),
            // A key minted by a controller we have not heard from yet may have arrived since.
            Err(auth::AuthError::UnknownKey) => {
                let fresh = self
                    .meta
                    .call(|s| s.secrets())
                    .await
                    .map_err(errors::stopped)?
                    .map_err(errors::status)?;
                *self.secrets.write() = fresh;
                check(&self.secrets.read())
                    .map(|c| c.user)
                    .map_err(errors::auth)
            }
            Err(e) => Err(errors::auth(e)),
        }
    }

    /// Active chunkservers ordered for receiving new data.
    pub fn placement_targets(&self, now: u64) -> Vec<String> {
        let reg = self.registry.lock();
        let candidates: Vec<(Candidate, String)> = reg
            .servers()
            .map(|s| {
                (
                    Candidate {
                        id: s.id.clone(),
                        zone: s.zone.clone(),
                        free_bytes: s.free_bytes(),
                        eligible: reg.health(s, now) == Health::Active,
                    },
                    s.address.clone(),
                )
            })
            .collect();
        let by_id: HashMap<&str, &str> = candidates
            .iter()
            .map(|(c, a)| (c.id.as_str(), a.as_str()))
            .collect();
        placement::order_targets(
            candidates.iter().map(|(c, _)| c),
            &HashSet::new(),
            &HashSet::new(),
        )
        .into_iter()
        .filter_map(|c| by_id.get(c.id.as_str()).map(|a| (*a).to_owned()))
        .collect()
    }

    /// Makes sure every chunk in `chunks` is stored on a live chunkserver, asking the servers
    /// about chunks the registry has not heard of yet (uploads beat heartbeats).
    async fn confirm_stored(&self, chunks: &[ChunkHash]) -> Result<(), Status> {
        let now = wall_ms();
        let unknown: Vec<ChunkHash> = {
            let reg = self.registry.lock();
            chunks
                .iter()
                .filter(|c| !reg.has_healthy_copy(c, now))
                .copied()
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let servers: Vec<(String, String)> = {
            let reg = self.registry.lock();
            reg.servers()
                .filter(|s| matches!(reg.health(s, now), Health::Active | Health::Draining))
                .map(|s| (s.id.clone(), s.address.clone()))
                .collect()
        };
        let asks = servers.into_iter().map(|(id, addr)| {
            let ids = unknown.clone();
            async move {
                let found = tokio::time::timeout(CONFIRM_TIMEOUT, has_chunks(&addr, &ids)).await;
                (id, ids, found)
            }
        });
        for (id, ids, found) in futures::future::join_all(asks).await {
            if let Ok(Ok(present)) = found {
                let mut reg = self.registry.lock();
                for (c, yes) in ids.iter().zip(present) {
                    if yes {
                        reg.note_stored(&id, *c);
                    }
                }
            }
        }
        let reg = self.registry.lock();
        if let Some(missing) = unknown.iter().find(|c| !reg.has_healthy_copy(c, now)) {
            return Err(Status::failed_precondition(format!(
                "chunk {} is not stored on any live chunkserver; upload it first",
                hex::encode(missing)
            )));
        }
        Ok(())
    }
}

/// Asks one chunkserver which of `ids` it holds.
async fn has_chunks(addr: &str, ids: &[ChunkHash]) -> anyhow::Result<Vec<bool>> {
    let mut client = crate::chunk_client::connect(addr).await?;
    let req = redcloud_proto::chunk::HasChunksRequest {
        ids: ids.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
    };
    let present = client.has_chunks(req).await?.into_inner().present;
    if present.len() != ids.len() {
        anyhow::bail!("{addr} answered {} of {} chunks", present.len(), ids.len());
    }
    Ok(present)
}

fn after(ts: u64) -> Option<Timestamp> {
    (ts > 0).then_some(Timestamp(ts))
}

fn require_tags(field: &str, tags: &[String]) -> Result<(), Status> {
    if tags.is_empty() {
        return Err(invalid(field, "give at least one tag"));
    }
    Ok(())
}

fn file_or_not_found(f: Option<FileView>, name: &str) -> Result<FileView, Status> {
    f.ok_or_else(|| Status::not_found(format!("file {name:?} not found")))
}

#[tonic::async_trait]
impl ControllerService for Api {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let r = req.into_inner();
        self.shared
            .meta
            .mutate(move |s| {
                let c = s.register_user(&r.user, &r.password, wall_ms())?;
                Ok(((), vec![c]))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let r = req.into_inner();
        let user = r.user.clone();
        let ok = self
            .shared
            .read(move |s| s.verify_password(&r.user, &r.password))
            .await?;
        if !ok {
            return Err(Status::unauthenticated("wrong user name or password"));
        }
        let expires_ms = wall_ms() + self.shared.settings.token_ttl_ms;
        let key = &self.shared.signing;
        let token = auth::issue(&user, expires_ms, &key.id, &key.key);
        Ok(Response::new(pb::LoginResponse { token, expires_ms }))
    }

    async fn plan_upload(
        &self,
        req: Request<pb::PlanUploadRequest>,
    ) -> Result<Response<pb::PlanUploadResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        self.shared.user(&req).await?;
        let r = req.into_inner();
        if r.chunks.len() > MAX_CHUNKS_PER_CALL {
            return Err(invalid(
                "chunks",
                format!("at most {MAX_CHUNKS_PER_CALL} per call"),
            ));
        }
        let now = wall_ms();
        let targets = self.shared.placement_targets(now);
        if targets.is_empty() {
            return Err(Status::unavailable("no live chunkserver to upload to"));
        }
        let reg = self.shared.registry.lock();
        let mut plans = Vec::with_capacity(r.chunks.len());
        for c in &r.chunks {
            let h = chunk_hash(&c.id, "chunks.id")?;
            if c.size > redcloud_proto::MAX_CHUNK_SIZE as u64 {
                return Err(invalid(
                    "chunks.size",
                    format!("{} is over the chunk limit", c.size),
                ));
            }
            // Deduplicate only against chunks a retained version references and a live server
            // holds: an orphan may be garbage-collected before this upload commits.
            let exists = self.shared.live.contains(&h) && reg.has_healthy_copy(&h, now);
            plans.push(pb::ChunkPlan {
                id: c.id.clone(),
                exists,
                targets: if exists { Vec::new() } else { targets.clone() },
            });
        }
        let quorum = (self.shared.settings.write_quorum as usize).min(targets.len()) as u32;
        Ok(Response::new(pb::PlanUploadResponse {
            chunks: plans,
            write_quorum: quorum,
        }))
    }

    async fn commit_file(
        &self,
        req: Request<pb::CommitFileRequest>,
    ) -> Result<Response<pb::CommitFileResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        if r.chunks.len() > MAX_CHUNKS_PER_CALL {
            return Err(invalid(
                "chunks",
                format!("at most {MAX_CHUNKS_PER_CALL} per file"),
            ));
        }
        let blake3: [u8; 32] = r.blake3[..]
            .try_into()
            .map_err(|_| invalid("blake3", "must be 32 bytes"))?;
        let mut chunks = Vec::with_capacity(r.chunks.len());
        let mut total = 0u64;
        for c in &r.chunks {
            chunks.push((chunk_hash(&c.id, "chunks.id")?, c.size));
            total = total.saturating_add(c.size);
        }
        if total != r.size {
            return Err(invalid(
                "size",
                format!("chunks add up to {total} bytes, not {}", r.size),
            ));
        }
        let distinct: Vec<ChunkHash> = chunks
            .iter()
            .map(|(h, _)| *h)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        self.shared.confirm_stored(&distinct).await?;
        let version = NewVersion {
            size: r.size,
            blake3,
            chunks: chunks.clone(),
            tags: r.tags,
        };
        let name = r.name;
        let after = after(r.after);
        let file = self
            .shared
            .meta
            .mutate(move |s| {
                let (_, commit) = s.add_version(&user, &name, version, wall_ms(), after)?;
                let file = s.file(&user, &name)?;
                Ok((file_or_not_found(file, &name), vec![commit]))
            })
            .await
            .map_err(errors::status)??;
        // The new chunks count as live at once (the repair loop refreshes the rest).
        self.shared.live.add(chunks);
        Ok(Response::new(pb::CommitFileResponse {
            file: Some(file_info(&file)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let tags = req.into_inner().tags;
        let files = self.shared.read(move |s| s.list(&user, &tags)).await?;
        Ok(Response::new(pb::ListResponse {
            files: files.iter().map(file_info).collect(),
        }))
    }

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        let name = r.name.clone();
        let found = self
            .shared
            .meta
            .call(move |s| -> Result<_, crate::error::MetaError> {
                if r.version.is_empty() {
                    return Ok(s
                        .file(&user, &r.name)?
                        .map(|f| (file_info(&f), f.head.chunks)));
                }
                let history = s.history(&user, &r.name)?;
                let tags = s.file(&user, &r.name)?.map(|f| f.tags).unwrap_or_default();
                let matches: Vec<_> = history
                    .into_iter()
                    .filter(|v| v.vid.starts_with(&r.version))
                    .collect();
                Ok(match matches.as_slice() {
                    [v] => {
                        let mut info = version_file_info(&r.name, v);
                        info.tags = tags;
                        Some((info, v.chunks.clone()))
                    }
                    _ => None,
                })
            })
            .await
            .map_err(errors::stopped)?
            .map_err(errors::status)?;
        let (file, chunks) =
            found.ok_or_else(|| Status::not_found(format!("file {name:?} not found")))?;
        let now = wall_ms();
        let reg = self.shared.registry.lock();
        // When no report names a holder yet (a controller just started), offer every server.
        let fallback: Vec<String> = reg
            .servers()
            .filter(|s| reg.health(s, now) != Health::Removed)
            .map(|s| s.address.clone())
            .collect();
        let locations = chunks
            .iter()
            .map(|c| {
                let mut addresses = reg.locations(&c.hash, now);
                if addresses.is_empty() {
                    addresses = fallback.clone();
                }
                pb::ChunkLocation {
                    id: Bytes::copy_from_slice(&c.hash),
                    size: c.len,
                    addresses,
                }
            })
            .collect();
        Ok(Response::new(pb::ResolveResponse {
            file: Some(file),
            chunks: locations,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        require_tags("tags", &r.tags)?;
        let after = after(r.after);
        let (names, hlc) = self
            .shared
            .meta
            .mutate(move |s| {
                let files = s.list(&user, &r.tags)?;
                let mut names = Vec::new();
                let mut commits = Vec::new();
                let mut hlc = 0;
                for f in files {
                    let (v, c) = s.delete(&user, &f.name, wall_ms(), after)?;
                    hlc = hlc.max(v.created.0);
                    names.push(f.name);
                    commits.push(c);
                }
                Ok(((names, hlc), commits))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::DeleteResponse { names, hlc }))
    }

    async fn add_tags(
        &self,
        req: Request<pb::TagsRequest>,
    ) -> Result<Response<pb::TagsResponse>, Status> {
        self.change_tags(req, true).await
    }

    async fn delete_tags(
        &self,
        req: Request<pb::TagsRequest>,
    ) -> Result<Response<pb::TagsResponse>, Status> {
        self.change_tags(req, false).await
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let name = req.into_inner().name;
        let n = name.clone();
        let versions = self.shared.read(move |s| s.history(&user, &n)).await?;
        if versions.is_empty() {
            return Err(Status::not_found(format!("file {name:?} not found")));
        }
        Ok(Response::new(pb::HistoryResponse {
            versions: versions.iter().map(version_info).collect(),
        }))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        let file = self
            .new_head(user, r.name, r.version, r.after, HeadChange::Restore)
            .await?;
        Ok(Response::new(pb::RestoreResponse {
            file: Some(file_info(&file)),
        }))
    }

    async fn conflicts(
        &self,
        req: Request<pb::ConflictsRequest>,
    ) -> Result<Response<pb::ConflictsResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let conflicts = self.shared.read(move |s| s.conflicts(&user)).await?;
        Ok(Response::new(pb::ConflictsResponse {
            conflicts: conflicts
                .iter()
                .map(|c| pb::Conflict {
                    name: c.name.clone(),
                    versions: c.candidates.iter().map(version_info).collect(),
                    winner: c.winner.clone(),
                })
                .collect(),
        }))
    }

    async fn resolve_conflict(
        &self,
        req: Request<pb::ResolveConflictRequest>,
    ) -> Result<Response<pb::ResolveConflictResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        let file = self
            .new_head(
                user,
                r.name,
                r.version,
                r.after,
                HeadChange::ResolveConflict,
            )
            .await?;
        Ok(Response::new(pb::ResolveConflictResponse {
            file: Some(file_info(&file)),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        status::status(&self.shared).await.map(Response::new)
    }
}

/// The two ways a user picks an earlier version as the new head.
#[derive(Debug, Clone, Copy)]
enum HeadChange {
    /// A new version with the old content (also undeletes).
    Restore,
    /// A new version superseding every current conflict candidate.
    ResolveConflict,
}

impl Api {
    /// Makes version `version` (an id or a unique prefix) of `name` the head again.
    async fn new_head(
        &self,
        user: String,
        name: String,
        version: String,
        after_ts: u64,
        how: HeadChange,
    ) -> Result<FileView, Status> {
        let after = after(after_ts);
        self.shared
            .meta
            .mutate(move |s| {
                let vid = full_vid(s, &user, &name, &version)?;
                let (_, c) = match how {
                    HeadChange::Restore => s.restore(&user, &name, &vid, wall_ms(), after)?,
                    HeadChange::ResolveConflict => {
                        s.resolve_conflict(&user, &name, &vid, wall_ms(), after)?
                    }
                };
                let f = s.file(&user, &name)?;
                Ok((file_or_not_found(f, &name), vec![c]))
            })
            .await
            .map_err(errors::status)?
    }

    async fn change_tags(
        &self,
        req: Request<pb::TagsRequest>,
        add: bool,
    ) -> Result<Response<pb::TagsResponse>, Status> {
        self.shared.metrics.api_calls.inc();
        let user = self.shared.user(&req).await?;
        let r = req.into_inner();
        require_tags("query", &r.query)?;
        require_tags("tags", &r.tags)?;
        let names = self
            .shared
            .meta
            .mutate(move |s| {
                let files = s.list(&user, &r.query)?;
                let mut names = Vec::new();
                let mut commits = Vec::new();
                for f in files {
                    let c = if add {
                        s.add_tags(&user, &f.name, &r.tags, wall_ms())?
                    } else {
                        s.remove_tags(&user, &f.name, &r.tags, wall_ms())?
                    };
                    commits.extend(c);
                    names.push(f.name);
                }
                Ok((names, commits))
            })
            .await
            .map_err(errors::status)?;
        Ok(Response::new(pb::TagsResponse { names }))
    }
}

/// Expands a version id prefix (as `history` prints them) to the full id.
fn full_vid(
    s: &crate::store::MetaStore,
    user: &str,
    name: &str,
    prefix: &str,
) -> Result<String, crate::error::MetaError> {
    if prefix.is_empty() {
        return Err(crate::error::MetaError::InvalidArgument {
            field: "version",
            reason: "give a version id (see `history`)".into(),
        });
    }
    let matches: Vec<String> = s
        .history(user, name)?
        .into_iter()
        .map(|v| v.vid)
        .filter(|v| v.starts_with(prefix))
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        0 => Err(crate::error::MetaError::NotFound(format!(
            "version {prefix:?} of {name:?}"
        ))),
        n => Err(crate::error::MetaError::InvalidArgument {
            field: "version",
            reason: format!("{prefix:?} matches {n} versions; give more of it"),
        }),
    }
}

fn version_file_info(name: &str, v: &crate::files::VersionView) -> pb::FileInfo {
    pb::FileInfo {
        name: name.to_owned(),
        size: v.size,
        tags: Vec::new(),
        version: v.vid.clone(),
        blake3: Bytes::copy_from_slice(&v.blake3),
        modified_ms: v.created.wall_ms(),
        hlc: v.created.0,
    }
}

/// Reads a counter (for status).
pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
