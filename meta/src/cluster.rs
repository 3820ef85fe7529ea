//! Operations on the `cluster` document: users, token secrets, settings and membership.
//!
//! All maps are flat, keyed by a name, with one encoded scalar per entry. Concurrent writes of
//! the same key on two sides of a partition leave an Automerge conflict; reads take Automerge's
//! deterministic winner, except where noted (passwords).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use automerge::ReadDoc;
use automerge::transaction::Transactable;

use crate::document::DocId;
use crate::error::MetaError;
use crate::hlc::Timestamp;
use crate::names::{self, NodeId};
use crate::record::{
    ChunkserverRecord, ChunkserverState, ControllerRecord, UserRecord, decode_msg,
};
use crate::store::{Commit, MetaStore};

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest address (gRPC or multiaddr) accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 512;
/// Default trash retention: 7 days.
pub const DEFAULT_TRASH_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// How many copies of each chunk the cluster keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationPolicy {
    /// Every active chunkserver holds every chunk (the default).
    All,
    Count(u32),
}

impl std::fmt::Display for ReplicationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicationPolicy::All => f.write_str("all"),
            ReplicationPolicy::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for ReplicationPolicy {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Self, MetaError> {
        if s == "all" {
            return Ok(ReplicationPolicy::All);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(ReplicationPolicy::Count(n)),
            _ => Err(MetaError::invalid(
                "replication",
                format!("{s:?} is neither \"all\" nor a number >= 1"),
            )),
        }
    }
}

/// Cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub replication: ReplicationPolicy,
    pub trash_retention_ms: u64,
    /// This store's shard count (fixed when the store was created).
    pub shards: u32,
}

/// A controller's membership entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerView {
    pub node: String,
    pub grpc_addr: String,
    pub p2p_addrs: Vec<String>,
    pub first_seen: Timestamp,
}

/// A chunkserver's membership entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkserverView {
    pub id: String,
    pub address: String,
    pub zone: String,
    pub state: ChunkserverState,
}

/// A token-signing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    pub key: [u8; 32],
}

fn corrupt(key: &str, reason: impl Into<String>) -> MetaError {
    MetaError::CorruptRecord {
        doc: "cluster".into(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn validate_address(field: &'static str, s: &str) -> Result<(), MetaError> {
    if s.is_empty() || s.len() > MAX_ADDRESS_BYTES || s.chars().any(char::is_control) {
        return Err(MetaError::invalid(
            field,
            format!("{s:?} must be 1-{MAX_ADDRESS_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

impl MetaStore {
    /// Every value of `key` in cluster map `map` (several after concurrent writes).
    fn cluster_values(&self, map: &str, key: &str) -> Result<Vec<Vec<u8>>, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        let all = doc
            .am
            .get_all(doc.map(map), key)
            .map_err(|e| corrupt(key, e.to_string()))?;
        all.into_iter()
            .map(|(v, _)| {
                v.as_bytes()
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| corrupt(key, "not bytes"))
            })
            .collect()
    }

    /// Automerge's deterministic winner among the values of `key` in cluster map `map`.
    fn cluster_value(&self, map: &str, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        match doc
            .am
            .get(doc.map(map), key)
            .map_err(|e| corrupt(key, e.to_string()))?
        {
            Some((v, _)) => v
                .as_bytes()
                .map(|b| Some(b.to_vec()))
                .ok_or_else(|| corrupt(key, "not bytes")),
            None => Ok(None),
        }
    }

    fn cluster_keys(&self, map: &str) -> Result<Vec<String>, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        Ok(doc.am.keys(doc.map(map)).collect())
    }

    /// Register `user`. `AlreadyExists` if this replica knows the name. Two partitions may
    /// register the same name concurrently; both registrations then stay (see
    /// [`MetaStore::verify_password`]).
    pub fn register_user(
        &mut self,
        user: &str,
        password: &str,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        names::validate_user(user)?;
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(MetaError::invalid(
                "password",
                format!("must be 1-{MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        if !self.cluster_values("users", user)?.is_empty() {
            return Err(MetaError::AlreadyExists(format!("user {user:?}")));
        }
        let cost = self.config.password_cost;
        let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| MetaError::PasswordHash(e.to_string()))?;
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| MetaError::PasswordHash(e.to_string()))?;
        let phc = hasher
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| MetaError::PasswordHash(e.to_string()))?
            .to_string();
        let time = self.clock.tick(wall_ms);
        let rec = prost::Message::encode_to_vec(&UserRecord {
            phc,
            created: time.0,
            origin: self.config.node_id.to_string(),
        });
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("users"), user, rec)?;
            Ok(())
        })?;
        Ok(commit)
    }

    /// Whether `password` is `user`'s. If two partitions registered the same name
    /// concurrently, the entry holds both hashes (an Automerge conflict) and either password
    /// is accepted: an AP trade-off that keeps both registrants able to log in and see the same
    /// files rather than locking one out after the partition heals.
    pub fn verify_password(&self, user: &str, password: &str) -> Result<bool, MetaError> {
        if names::validate_user(user).is_err() {
            return Ok(false);
        }
        for bytes in self.cluster_values("users", user)? {
            let rec: UserRecord = decode_msg(&bytes).map_err(|e| corrupt(user, e))?;
            let hash = PasswordHash::new(&rec.phc).map_err(|e| corrupt(user, e.to_string()))?;
            if argon2::Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Registered user names, sorted.
    pub fn users(&self) -> Result<Vec<String>, MetaError> {
        self.cluster_keys("users")
    }

    /// This controller's token secret, creating one if it has none. Secrets are keyed
    /// `<node id>/<random>`; each controller makes its own, so concurrent creation leaves every
    /// secret valid. The commit is `None` when the secret already existed.
    pub fn ensure_secret(&mut self, wall_ms: u64) -> Result<(Secret, Option<Commit>), MetaError> {
        let prefix = format!("{}/", self.config.node_id);
        if let Some(s) = self
            .secrets()?
            .into_iter()
            .find(|s| s.id.starts_with(&prefix))
        {
            return Ok((s, None));
        }
        let secret = Secret {
            id: format!("{prefix}{:016x}", rand::random::<u64>()),
            key: rand::random(),
        };
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("secrets"), secret.id.as_str(), secret.key.to_vec())?;
            Ok(())
        })?;
        Ok((secret, Some(commit)))
    }

    /// Every token secret, by id. Any of them validates a token.
    pub fn secrets(&self) -> Result<Vec<Secret>, MetaError> {
        let mut out = Vec::new();
        for id in self.cluster_keys("secrets")? {
            for bytes in self.cluster_values("secrets", &id)? {
                let key = <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| corrupt(&id, "secret is not 32 bytes"))?;
                out.push(Secret {
                    id: id.clone(),
                    key,
                });
            }
        }
        Ok(out)
    }

    pub fn settings(&self) -> Result<Settings, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        let settings = doc.map("settings");
        let get = |key: &str| {
            doc.am
                .get(settings, key)
                .map_err(|e| corrupt(key, e.to_string()))
        };
        let replication = match get("replication")? {
            Some((v, _)) => v
                .as_str()
                .ok_or_else(|| corrupt("replication", "not a string"))?
                .parse()
                .map_err(|e: MetaError| corrupt("replication", e.to_string()))?,
            None => ReplicationPolicy::All,
        };
        let trash_retention_ms = match get("trash_retention_ms")? {
            Some((v, _)) => v
                .as_u64()
                .ok_or_else(|| corrupt("trash_retention_ms", "not an unsigned number"))?,
            None => DEFAULT_TRASH_RETENTION_MS,
        };
        Ok(Settings {
            replication,
            trash_retention_ms,
            shards: self.shards(),
        })
    }

    pub fn set_replication(
        &mut self,
        policy: ReplicationPolicy,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        if policy == ReplicationPolicy::Count(0) {
            return Err(MetaError::invalid("replication", "must be at least 1"));
        }
        let time = self.clock.tick(wall_ms);
        let value = policy.to_string();
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("settings"), "replication", value)?;
            Ok(())
        })?;
        Ok(commit)
    }

    pub fn set_trash_retention(&mut self, ms: u64, wall_ms: u64) -> Result<Commit, MetaError> {
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("settings"), "trash_retention_ms", ms)?;
            Ok(())
        })?;
        Ok(commit)
    }

    /// Record a controller's addresses. Writes only when something changed (so the document
    /// does not grow with announcements); keeps the first-seen time.
    pub fn upsert_controller(
        &mut self,
        node: &NodeId,
        grpc_addr: &str,
        p2p_addrs: &[String],
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        validate_address("grpc address", grpc_addr)?;
        for a in p2p_addrs {
            validate_address("p2p address", a)?;
        }
        let existing = match self.cluster_value("controllers", node.as_str())? {
            Some(b) => {
                Some(decode_msg::<ControllerRecord>(&b).map_err(|e| corrupt(node.as_str(), e))?)
            }
            None => None,
        };
        if let Some(e) = &existing
            && e.grpc_addr == grpc_addr
            && e.p2p_addrs == p2p_addrs
        {
            return Ok(None);
        }
        let time = self.clock.tick(wall_ms);
        let rec = ControllerRecord {
            grpc_addr: grpc_addr.to_owned(),
            p2p_addrs: p2p_addrs.to_vec(),
            first_seen: existing.map_or(time.0, |e| e.first_seen),
        };
        let bytes = prost::Message::encode_to_vec(&rec);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("controllers"), node.as_str(), bytes)?;
            Ok(())
        })?;
        Ok(Some(commit))
    }

    pub fn controllers(&self) -> Result<Vec<ControllerView>, MetaError> {
        let mut out = Vec::new();
        for node in self.cluster_keys("controllers")? {
            let Some(bytes) = self.cluster_value("controllers", &node)? else {
                continue;
            };
            let rec: ControllerRecord = decode_msg(&bytes).map_err(|e| corrupt(&node, e))?;
            out.push(ControllerView {
                node,
                grpc_addr: rec.grpc_addr,
                p2p_addrs: rec.p2p_addrs,
                first_seen: Timestamp(rec.first_seen),
            });
        }
        Ok(out)
    }

    fn chunkserver(&self, id: &str) -> Result<Option<ChunkserverRecord>, MetaError> {
        match self.cluster_value("chunkservers", id)? {
            Some(b) => ChunkserverRecord::decode(&b)
                .map(Some)
                .map_err(|e| corrupt(id, e)),
            None => Ok(None),
        }
    }

    fn put_chunkserver(
        &mut self,
        id: &str,
        rec: &ChunkserverRecord,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        let time = self.clock.tick(wall_ms);
        let bytes = rec.encode();
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("chunkservers"), id, bytes)?;
            Ok(())
        })?;
        Ok(commit)
    }

    /// Record a chunkserver's address and zone (a new one starts `Active`; an existing one
    /// keeps its state). Writes only when something changed.
    pub fn upsert_chunkserver(
        &mut self,
        id: &str,
        address: &str,
        zone: &str,
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        names::validate_text_field("chunkserver id", id)?;
        validate_address("chunkserver address", address)?;
        if !zone.is_empty() {
            names::validate_text_field("zone", zone)?;
        }
        let existing = self.chunkserver(id)?;
        let state = existing
            .as_ref()
            .map_or(ChunkserverState::Active, |e| e.state);
        let rec = ChunkserverRecord {
            address: address.to_owned(),
            zone: zone.to_owned(),
            state,
        };
        if existing.as_ref() == Some(&rec) {
            return Ok(None);
        }
        self.put_chunkserver(id, &rec, wall_ms).map(Some)
    }

    /// Set a chunkserver's administrative state; `NotFound` if unknown, `None` if unchanged.
    pub fn set_chunkserver_state(
        &mut self,
        id: &str,
        state: ChunkserverState,
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        names::validate_text_field("chunkserver id", id)?;
        let mut rec = self
            .chunkserver(id)?
            .ok_or_else(|| MetaError::NotFound(format!("chunkserver {id:?}")))?;
        if rec.state == state {
            return Ok(None);
        }
        rec.state = state;
        self.put_chunkserver(id, &rec, wall_ms).map(Some)
    }

    pub fn chunkservers(&self) -> Result<Vec<ChunkserverView>, MetaError> {
        let mut out = Vec::new();
        for id in self.cluster_keys("chunkservers")? {
            let Some(rec) = self.chunkserver(&id)? else {
                continue;
            };
            out.push(ChunkserverView {
                id,
                address: rec.address,
                zone: rec.zone,
                state: rec.state,
            });
        }
        Ok(out)
    }
}
