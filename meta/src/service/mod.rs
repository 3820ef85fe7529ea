//! The controller's gRPC services: the client API (`ControllerService`) here, the chunkserver
//! registry (`RegistryService`) in [`registry_api`], operator actions (`AdminService`) in
//! [`admin`], and `Status` in [`status`].
//!
//! Every call but Register and Login carries a bearer token; the user it names is the owner of
//! every file the call reads or changes, so a user only ever sees their own files. The
//! controller enforces the file model itself (a file has at least one tag, names and tags are
//! valid, sizes add up), whatever the client checked. Metadata work goes through the
//! [`MetaHandle`] (which replicates every commit); chunk locations come from the soft-state
//! [`Directory`]; a commit's copies are confirmed by the chunkservers themselves
//! ([`confirm`]).

pub mod admin;
pub mod commit;
pub mod confirm;
pub mod convert;
pub mod errors;
pub mod logins;
pub mod registry_api;
pub mod status;

use redcloud_proto::trust::Access;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use redcloud_proto::controller as pb;
use redcloud_proto::controller::controller_service_server::ControllerService;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Tokens};
use crate::clock::NodeClock;
use crate::collector::GcStatus;
use crate::directory::Directory;
use crate::files::FileView;
use crate::handle::MetaHandle;
use crate::hlc::Timestamp;
use crate::live::LiveSet;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::record::ChunkHash;
use crate::repair::plan::Health;
use crate::repair::worker::RepairStatus;
use crate::workers::WorkerBoard;
use convert::{chunk_hash, file_info, version_info};
use errors::invalid;

/// Most chunks one PlanUpload, CommitFile or HoldChunks may name (a 400 GiB file at 4 MiB
/// chunks), and so the most one HasChunks asks a chunkserver about.
pub const MAX_CHUNKS_PER_CALL: usize = 100_000;

/// Settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub write_quorum: u32,
    /// How often a long upload asks for its chunks to be held (a fraction of the GC grace).
    pub hold_interval_ms: u64,
}

/// The parts of one controller. Each part owns its state; the services hold them all, and
/// How long a chunk grant from PlanUpload or Resolve stays valid.
pub const GRANT_TTL_MS: u64 = 3_600_000;

/// every background worker receives only the parts it uses.
#[derive(Debug)]
pub struct Components {
    pub node_id: String,
    /// Advertised gRPC address.
    pub address: String,
    pub meta: MetaHandle,
    pub clock: Arc<NodeClock>,
    pub directory: Arc<Directory>,
    pub peers: Arc<Peers>,
    pub live: Arc<LiveSet>,
    pub tokens: Arc<Tokens>,
    pub repair: Arc<RepairStatus>,
    pub gc: Arc<GcStatus>,
    pub metrics: Arc<Metrics>,
    pub workers: Arc<WorkerBoard>,
    pub settings: ApiSettings,
    /// The credentials this controller checks and presents (open in insecure mode).
    pub gate: redcloud_proto::trust::Gate,
    /// How chunkservers are reached (confirming copies, inventories).
    pub chunks: crate::chunk_client::Dialer,
    /// Failed-login counts (brute force is slowed) and the argon2 pool.
    pub logins: Arc<logins::Limiter>,
    pub hashers: logins::Hashers,
}

/// The client API.
#[derive(Debug, Clone)]
pub struct Api {
    pub parts: Arc<Components>,
}

impl Components {
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
        self.session(req).await.map(|(claims, _)| claims.user)
    }

    /// The claims of the request's bearer token, and its digest (what a logout revokes).
    /// Refused when the token is invalid, expired or revoked.
    pub async fn session<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(crate::auth::Claims, String), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing token: log in first"))?;
        let now = self.clock.now_ms();
        let claims = match self.tokens.check(token, now) {
            Ok(c) => c,
            // A key minted by a controller we have not heard from yet may have arrived since.
            Err(AuthError::UnknownKey) => {
                let fresh = self.read(|s| s.secrets()).await?;
                self.tokens.refresh(fresh);
                self.tokens.check(token, now).map_err(errors::auth)?
            }
            Err(e) => return Err(errors::auth(e)),
        };
        let digest = crate::auth::digest(token);
        let d = digest.clone();
        if self.read(move |s| s.token_revoked(&d)).await? {
            return Err(Status::unauthenticated(
                "this session was logged out: log in again",
            ));
        }
        Ok((claims, digest))
    }
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

/// Distinct 32-byte chunk ids from the wire, at most [`MAX_CHUNKS_PER_CALL`].
fn chunk_ids(raw: &[Bytes], field: &str) -> Result<Vec<ChunkHash>, Status> {
    if raw.len() > MAX_CHUNKS_PER_CALL {
        return Err(invalid(
            field,
            format!("at most {MAX_CHUNKS_PER_CALL} per call"),
        ));
    }
    let mut seen = HashSet::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for b in raw {
        let h = chunk_hash(b, field)?;
        if seen.insert(h) {
            out.push(h);
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl ControllerService for Api {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        // Registration is the one call that grows replicated state without a credential:
        // each address gets a few, then waits longer and longer.
        let address = req
            .remote_addr()
            .map(|a| format!("r:{}", a.ip()))
            .unwrap_or_else(|| "r:unknown".into());
        if let Err(wait_ms) = p.logins.check(&address, p.clock.mono_ms()) {
            return Err(Status::resource_exhausted(format!(
                "too many registrations from this address; try again in {} s",
                wait_ms.div_ceil(1000)
            )));
        }
        let r = req.into_inner();
        crate::names::validate_user(&r.user).map_err(errors::status)?;
        // Refuse a known name before paying for a hash.
        let user = r.user.clone();
        if p.read(move |s| s.login_hashes(&user)).await? != crate::cluster::Login::Unknown {
            return Err(Status::already_exists(format!(
                "user {:?} already exists",
                r.user
            )));
        }
        if r.password.len() < crate::cluster::MIN_PASSWORD_BYTES {
            return Err(invalid(
                "password",
                format!(
                    "must be at least {} bytes",
                    crate::cluster::MIN_PASSWORD_BYTES
                ),
            ));
        }
        let password = r.password;
        let phc = p
            .hashers
            .run(move || {
                crate::cluster::hash_password(&password, crate::store::PasswordCost::default())
            })
            .await?
            .map_err(errors::status)?;
        let clock = p.clock.clone();
        p.meta
            .mutate(move |s| {
                let c = s.register_hashed(&r.user, &phc, clock.now_ms())?;
                Ok(((), vec![c]))
            })
            .await
            .map_err(errors::status)?;
        p.logins.failed(
            &address,
            logins::FREE_REGISTRATIONS_PER_ADDRESS,
            p.clock.mono_ms(),
        );
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let address = req
            .remote_addr()
            .map(|a| format!("a:{}", a.ip()))
            .unwrap_or_else(|| "a:unknown".into());
        let r = req.into_inner();
        let user = r.user.clone();
        let user_key = format!("u:{user}");
        let now = p.clock.mono_ms();
        for key in [&user_key, &address] {
            if let Err(wait_ms) = p.logins.check(key, now) {
                return Err(Status::resource_exhausted(format!(
                    "too many failed logins; try again in {} s",
                    wait_ms.div_ceil(1000)
                )));
            }
        }
        let name = r.user.clone();
        let login = p.read(move |s| s.login_hashes(&name)).await?;
        let ok = match login {
            crate::cluster::Login::Hash(phc) => {
                let password = r.password;
                p.hashers
                    .run(move || crate::cluster::verify_hash(&phc, &password))
                    .await?
                    .map_err(errors::status)?
            }
            crate::cluster::Login::Contested => {
                return Err(Status::failed_precondition(format!(
                    "the name {user:?} was registered twice while the cluster was partitioned; \
                     to keep each registrant's files from the other, neither can log in until \
                     an operator settles it"
                )));
            }
            crate::cluster::Login::Unknown => false,
        };
        if !ok {
            let now = p.clock.mono_ms();
            p.logins.failed(&user_key, logins::FREE_USER_FAILURES, now);
            p.logins
                .failed(&address, logins::FREE_ADDRESS_FAILURES, now);
            return Err(Status::unauthenticated("wrong user name or password"));
        }
        p.logins.succeeded(&user_key);
        let (token, expires_ms) = p.tokens.issue(&user, p.clock.now_ms());
        Ok(Response::new(pb::LoginResponse { token, expires_ms }))
    }

    async fn plan_upload(
        &self,
        req: Request<pb::PlanUploadRequest>,
    ) -> Result<Response<pb::PlanUploadResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let r = req.into_inner();
        if r.chunks.len() > MAX_CHUNKS_PER_CALL {
            return Err(invalid(
                "chunks",
                format!("at most {MAX_CHUNKS_PER_CALL} per call"),
            ));
        }
        let now = p.clock.mono_ms();
        let targets: Vec<String> = p
            .directory
            .placement_targets(now)
            .into_iter()
            .map(|t| t.address)
            .collect();
        if targets.is_empty() {
            return Err(Status::unavailable("no live chunkserver to upload to"));
        }
        let quorum = (p.settings.write_quorum as usize).min(targets.len());
        // Deduplicate only against this user's own chunks: "already stored" must not tell a
        // user that someone else holds content with a given hash.
        // Only chunks that could be skipped at all (live, with the quorum's copies) are looked
        // up in the owner's versions, so an upload of new data costs no scan.
        let candidates: std::collections::HashSet<crate::record::ChunkHash> = r
            .chunks
            .iter()
            .filter_map(|c| <[u8; 32]>::try_from(&c.id[..]).ok())
            .filter(|h| p.live.contains(h) && p.directory.active_copies(h, now) >= quorum)
            .collect();
        let owned = if r.force || candidates.is_empty() {
            Default::default()
        } else {
            let user = user.clone();
            p.read(move |s| s.owner_references(&user, &candidates))
                .await?
        };
        let grant_until = p.clock.now_ms().saturating_add(GRANT_TTL_MS);
        let mut plans = Vec::with_capacity(r.chunks.len());
        for c in &r.chunks {
            let h = chunk_hash(&c.id, "chunks.id")?;
            if c.size > redcloud_proto::MAX_CHUNK_SIZE as u64 {
                return Err(invalid(
                    "chunks.size",
                    format!("{} is over the chunk limit", c.size),
                ));
            }
            // Deduplicate only against chunks a retained version references and that have the
            // quorum's copies on active servers (an orphan may be collected before this upload
            // commits; the commit confirms the copies again with the servers themselves).
            let exists = !r.force
                && owned.contains(&h)
                && p.live.contains(&h)
                && p.directory.active_copies(&h, now) >= quorum;
            let grant = match p.gate.grant_key() {
                Some(k) if !exists => k.sign(Access::Write, &h, grant_until),
                _ => String::new(),
            };
            plans.push(pb::ChunkPlan {
                id: c.id.clone(),
                exists,
                targets: if exists { Vec::new() } else { targets.clone() },
                grant,
            });
        }
        Ok(Response::new(pb::PlanUploadResponse {
            chunks: plans,
            write_quorum: quorum as u32,
            hold_interval_ms: p.settings.hold_interval_ms,
        }))
    }

    async fn commit_file(
        &self,
        req: Request<pb::CommitFileRequest>,
    ) -> Result<Response<pb::CommitFileResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let mut answers = commit::commit(p, user, vec![req.into_inner()]).await?;
        match answers.pop() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::internal("the commit gave no answer")),
        }
    }

    async fn commit_files(
        &self,
        req: Request<pb::CommitFilesRequest>,
    ) -> Result<Response<pb::CommitFilesResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let answers = commit::commit(p, user, req.into_inner().files).await?;
        let files = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(response) => pb::CommitFileOutcome {
                    response: Some(response),
                    code: 0,
                    error: String::new(),
                },
                Err(status) => pb::CommitFileOutcome {
                    response: None,
                    code: status.code() as i32,
                    error: status.message().to_owned(),
                },
            })
            .collect();
        Ok(Response::new(pb::CommitFilesResponse { files }))
    }

    async fn hold_chunks(
        &self,
        req: Request<pb::HoldChunksRequest>,
    ) -> Result<Response<pb::HoldChunksResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        p.user(&req).await?;
        let ids = chunk_ids(&req.into_inner().ids, "ids")?;
        let servers = p
            .directory
            .servers_in(p.clock.mono_ms(), &[Health::Active, Health::Draining]);
        let copies = confirm::confirm_copies(&p.chunks, &servers, &ids, true).await;
        Ok(Response::new(pb::HoldChunksResponse {
            held: copies.len() as u32,
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let tags = req.into_inner().tags;
        let files = p.read(move |s| s.list(&user, &tags)).await?;
        Ok(Response::new(pb::ListResponse {
            files: files.iter().map(file_info).collect(),
        }))
    }

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let r = req.into_inner();
        let name = r.name.clone();
        let found = p
            .read(move |s| {
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
            .await?;
        let (file, chunks) =
            found.ok_or_else(|| Status::not_found(format!("file {name:?} not found")))?;
        let now = p.clock.mono_ms();
        let grant_until = p.clock.now_ms().saturating_add(GRANT_TTL_MS);
        let locations = chunks
            .iter()
            .map(|c| pb::ChunkLocation {
                id: Bytes::copy_from_slice(&c.hash),
                size: c.len,
                addresses: p.directory.read_locations(&c.hash, now),
                grant: p
                    .gate
                    .grant_key()
                    .map(|k| k.sign(Access::Read, &c.hash, grant_until))
                    .unwrap_or_default(),
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
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let r = req.into_inner();
        require_tags("tags", &r.tags)?;
        let after = after(r.after);
        let clock = p.clock.clone();
        let (names, hlc) = p
            .meta
            .mutate(move |s| {
                let files = s.list(&user, &r.tags)?;
                let mut names = Vec::new();
                let mut commits = Vec::new();
                let mut hlc = 0;
                for f in files {
                    let (v, c) = s.delete(&user, &f.name, clock.now_ms(), after)?;
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
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let name = req.into_inner().name;
        let n = name.clone();
        let versions = p.read(move |s| s.history(&user, &n)).await?;
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
        self.parts.metrics.api_calls.inc();
        let user = self.parts.user(&req).await?;
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
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let conflicts = p.read(move |s| s.conflicts(&user)).await?;
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
        self.parts.metrics.api_calls.inc();
        let user = self.parts.user(&req).await?;
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

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let (claims, digest) = p.session(&req).await?;
        let now = p.clock.now_ms();
        p.meta
            .mutate(move |s| {
                let c = s.revoke_token(&digest, claims.expires_ms, now)?;
                Ok((pb::LogoutResponse {}, vec![c]))
            })
            .await
            .map_err(errors::status)
            .map(Response::new)
    }

    /// The whole cluster for a caller with the admin credential; a logged-in user's own
    /// counts otherwise.
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let p = &self.parts;
        p.metrics.api_calls.inc();
        if p.gate.require_admin(req.metadata()).is_ok() {
            return status::status(p).await.map(Response::new);
        }
        let user = p.user(&req).await.map_err(|_| {
            Status::unauthenticated(
                "status: log in for your own counts, or run it with the cluster secret \
                 (--secret-file) for the cluster's",
            )
        })?;
        status::user_status(p, user).await.map(Response::new)
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
        let clock = self.parts.clock.clone();
        self.parts
            .meta
            .mutate(move |s| {
                let vid = full_vid(s, &user, &name, &version)?;
                let now = clock.now_ms();
                let (_, c) = match how {
                    HeadChange::Restore => s.restore(&user, &name, &vid, now, after)?,
                    HeadChange::ResolveConflict => {
                        s.resolve_conflict(&user, &name, &vid, now, after)?
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
        let p = &self.parts;
        p.metrics.api_calls.inc();
        let user = p.user(&req).await?;
        let r = req.into_inner();
        require_tags("query", &r.query)?;
        require_tags("tags", &r.tags)?;
        let clock = p.clock.clone();
        let names = p
            .meta
            .mutate(move |s| {
                let files = s.list(&user, &r.query)?;
                if !add {
                    // A file keeps at least one tag: a file without tags could never again be
                    // reached by `delete TAG...`.
                    if let Some(f) = files
                        .iter()
                        .find(|f| f.tags.iter().all(|t| r.tags.contains(t)))
                    {
                        return Err(crate::error::MetaError::invalid(
                            "tags",
                            format!(
                                "removing them would leave {:?} without tags; a file keeps at \
                                 least one (delete the file instead)",
                                f.name
                            ),
                        ));
                    }
                }
                let mut names = Vec::new();
                let mut commits = Vec::new();
                let now = clock.now_ms();
                for f in files {
                    let c = if add {
                        s.add_tags(&user, &f.name, &r.tags, now)?
                    } else {
                        s.remove_tags(&user, &f.name, &r.tags, now)?
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
