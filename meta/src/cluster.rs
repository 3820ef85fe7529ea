//! Operations on the `cluster` document: users, token secrets, settings and membership.
//!
//! All maps are flat, keyed by a name, with one encoded scalar per entry. Concurrent writes of
//! the same key on two sides of a partition leave an Automerge conflict; reads take Automerge's
//! deterministic winner, except where noted (passwords, the replication policy).
//!
//! Key layout beyond plain names (parts joined by `\x1f`):
//! - `settings`: `replication` (`<hlc>:<policy>`, highest HLC wins; a seed from a node's flags
//!   has HLC 0, so an explicit `set-replication` always beats it), `shards` (fixed when the
//!   cluster is created), `trash_retention_ms`, and `lineage\x1f<store id>` (one per metadata
//!   store ever created: see [`MetaStore::lineage`]);
//! - `controllers`: `<node>` (addresses) and `<node>\x1fforgotten` (an operator's forget);
//! - `chunkservers`: `<id>\x1fmember` (address and zone, written by heartbeats) and
//!   `<id>\x1fstate` (active, draining, removed: written only by operators and drain
//!   completion), separate so a heartbeat never overwrites a concurrent drain.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use automerge::ReadDoc;
use automerge::transaction::Transactable;

use crate::document::DocId;
use crate::error::MetaError;
use crate::hlc::Timestamp;
use crate::names::{self, NodeId, SEP};
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
    /// An operator forgot it: GC no longer waits to be in sync with it.
    pub forgotten: bool,
}

const FORGOTTEN: &str = "forgotten";
/// Prefix of revoked-token entries in the users map.
const REVOKED: &str = "revoked:";
const MEMBER: &str = "member";
const STATE: &str = "state";
const LINEAGE: &str = "lineage";

fn sub(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

/// A chunkserver's membership entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkserverView {
    pub id: String,
    pub address: String,
    pub zone: String,
    pub state: ChunkserverState,
}

/// What a login is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Unknown,
    /// The argon2 PHC string of the one registration.
    Hash(String),
    /// Registered concurrently more than once (a partition): no password is accepted.
    Contested,
}

/// Shortest password a new registration may use (the API enforces it).
pub const MIN_PASSWORD_BYTES: usize = 8;

/// Hashes `password` with argon2id at `cost`. Slow by design: run it off the metadata thread.
pub fn hash_password(
    password: &str,
    cost: crate::store::PasswordCost,
) -> Result<String, MetaError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(MetaError::invalid(
            "password",
            format!("must be 1-{MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| MetaError::PasswordHash(e.to_string()))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| MetaError::PasswordHash(e.to_string()))?;
    Ok(hasher
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| MetaError::PasswordHash(e.to_string()))?
        .to_string())
}

/// Whether `password` matches the PHC string `phc`.
pub fn verify_hash(phc: &str, password: &str) -> Result<bool, MetaError> {
    let hash = PasswordHash::new(phc).map_err(|e| MetaError::PasswordHash(e.to_string()))?;
    Ok(argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
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

    /// Register `user` with `password` (hashed here, on the caller's thread: tests and tools;
    /// the API hashes off the metadata thread and calls [`MetaStore::register_hashed`]).
    pub fn register_user(
        &mut self,
        user: &str,
        password: &str,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        names::validate_user(user)?;
        if !self.cluster_values("users", user)?.is_empty() {
            return Err(MetaError::AlreadyExists(format!("user {user:?}")));
        }
        let phc = hash_password(password, self.config.password_cost)?;
        self.register_hashed(user, &phc, wall_ms)
    }

    /// Register `user` with an argon2 PHC string from [`hash_password`]. `AlreadyExists` if
    /// this replica knows the name. Two partitions may register the same name concurrently;
    /// both registrations then stay and the name is locked (see [`MetaStore::login_hashes`]).
    pub fn register_hashed(
        &mut self,
        user: &str,
        phc: &str,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        names::validate_user(user)?;
        PasswordHash::new(phc).map_err(|e| MetaError::invalid("password", e.to_string()))?;
        if !self.cluster_values("users", user)?.is_empty() {
            return Err(MetaError::AlreadyExists(format!("user {user:?}")));
        }
        let time = self.clock.tick(wall_ms);
        let rec = prost::Message::encode_to_vec(&UserRecord {
            phc: phc.to_owned(),
            created: time.0,
            origin: self.config.node_id.to_string(),
        });
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("users"), user, rec)?;
            Ok(())
        })?;
        Ok(commit)
    }

    /// What a login checks `user`'s password against, read on the metadata thread so the
    /// (slow, by design) argon2 check can run elsewhere.
    pub fn login_hashes(&self, user: &str) -> Result<Login, MetaError> {
        if names::validate_user(user).is_err() {
            return Ok(Login::Unknown);
        }
        let records = self.cluster_values("users", user)?;
        match records.as_slice() {
            [] => Ok(Login::Unknown),
            [one] => {
                let rec: UserRecord = decode_msg(one).map_err(|e| corrupt(user, e))?;
                Ok(Login::Hash(rec.phc))
            }
            // Registered on both sides of a partition: two people may own this name, and
            // each side's files now sit under it. Letting either password in would hand one
            // the other's files, so neither gets in until an operator settles it.
            _ => Ok(Login::Contested),
        }
    }

    /// Whether `password` is `user`'s (argon2 on this thread; the API uses
    /// [`MetaStore::login_hashes`] and [`verify_hash`] off the metadata thread). A contested
    /// name accepts no password.
    pub fn verify_password(&self, user: &str, password: &str) -> Result<bool, MetaError> {
        match self.login_hashes(user)? {
            Login::Hash(phc) => verify_hash(&phc, password),
            Login::Unknown | Login::Contested => Ok(false),
        }
    }

    /// Revokes a session token (named by its digest) until `expires_ms`, when it would stop
    /// working anyway. Revocations live in the users map under `revoked:` keys (no user name
    /// has a colon), so they replicate with the accounts; entries a day past their token's
    /// expiry are dropped in the same change.
    pub fn revoke_token(
        &mut self,
        digest: &str,
        expires_ms: u64,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        if digest.is_empty() || digest.len() > 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(MetaError::invalid("token digest", "not a hex digest"));
        }
        const MARGIN_MS: u64 = 24 * 3600 * 1000;
        let mut stale = Vec::new();
        for key in self.cluster_keys("users")? {
            if key.starts_with(REVOKED)
                && let Some(v) = self.cluster_value("users", &key)?
                && let Ok(b) = <[u8; 8]>::try_from(v.as_slice())
                && u64::from_be_bytes(b).saturating_add(MARGIN_MS) < wall_ms
            {
                stale.push(key);
            }
        }
        let key = format!("{REVOKED}{digest}");
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(
                m.get("users"),
                key.as_str(),
                expires_ms.to_be_bytes().to_vec(),
            )?;
            for old in &stale {
                tx.delete(m.get("users"), old.as_str())?;
            }
            Ok(())
        })?;
        Ok(commit)
    }

    /// Whether the token with this digest was revoked (`redcloud logout`).
    pub fn token_revoked(&self, digest: &str) -> Result<bool, MetaError> {
        Ok(!self
            .cluster_values("users", &format!("{REVOKED}{digest}"))?
            .is_empty())
    }

    /// Registered user names, sorted.
    pub fn users(&self) -> Result<Vec<String>, MetaError> {
        Ok(self
            .cluster_keys("users")?
            .into_iter()
            .filter(|k| !k.starts_with(REVOKED))
            .collect())
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
        let replication = self
            .replication_value()?
            .map_or(ReplicationPolicy::All, |(_, p)| p);
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

    /// The replication policy written in the document, with the HLC it was set at (0 for a
    /// seed): of concurrent values the highest `(hlc, policy)` wins, on every replica alike.
    fn replication_value(&self) -> Result<Option<(u64, ReplicationPolicy)>, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        let all = doc
            .am
            .get_all(doc.map("settings"), "replication")
            .map_err(|e| corrupt("replication", e.to_string()))?;
        let mut best: Option<(u64, String)> = None;
        for (v, _) in all {
            let text = v
                .as_str()
                .ok_or_else(|| corrupt("replication", "not a string"))?;
            // "<hlc>:<policy>"; a bare policy (older stores) counts as a seed.
            let (hlc, policy) = match text.split_once(':') {
                Some((h, p)) => (
                    h.parse::<u64>()
                        .map_err(|_| corrupt("replication", format!("bad HLC in {text:?}")))?,
                    p,
                ),
                None => (0, text),
            };
            let candidate = (hlc, policy.to_owned());
            if best.as_ref().is_none_or(|b| candidate > *b) {
                best = Some(candidate);
            }
        }
        best.map(|(hlc, p)| {
            p.parse()
                .map(|policy| (hlc, policy))
                .map_err(|e: MetaError| corrupt("replication", e.to_string()))
        })
        .transpose()
    }

    /// Seeds the replication policy of a new cluster (a node's `--replication`). Writes only
    /// when the document holds no policy yet; `None` when it wrote nothing.
    pub fn seed_replication(
        &mut self,
        policy: ReplicationPolicy,
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        if self.replication_value()?.is_some() {
            return Ok(None);
        }
        self.put_replication(0, policy, wall_ms).map(Some)
    }

    /// Sets the replication policy (an operator's `set-replication`): beats every seed and
    /// every earlier setting.
    pub fn set_replication(
        &mut self,
        policy: ReplicationPolicy,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        let time = self.clock.tick(wall_ms);
        self.put_replication(time.0, policy, wall_ms)
    }

    fn put_replication(
        &mut self,
        hlc: u64,
        policy: ReplicationPolicy,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        if policy == ReplicationPolicy::Count(0) {
            return Err(MetaError::invalid("replication", "must be at least 1"));
        }
        let time = self.clock.tick(wall_ms);
        let value = format!("{hlc}:{policy}");
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("settings"), "replication", value)?;
            Ok(())
        })?;
        Ok(commit)
    }

    /// Every shard count the cluster document records (one, unless two clusters of different
    /// shapes were merged, which the network layer prevents).
    pub fn cluster_shards(&self) -> Result<Vec<u64>, MetaError> {
        let doc = self.doc(DocId::Cluster)?;
        let all = doc
            .am
            .get_all(doc.map("settings"), "shards")
            .map_err(|e| corrupt("shards", e.to_string()))?;
        all.into_iter()
            .map(|(v, _)| v.as_u64().ok_or_else(|| corrupt("shards", "not a number")))
            .collect()
    }

    /// Every metadata store incarnation the cluster document records, sorted: each controller
    /// adds its store's id when the store is created. Chunkservers remember the union they
    /// learn and refuse deletes from a controller whose lineage lacks any of it, so a
    /// controller that has not seen the cluster's state (a new or wiped one) deletes nothing.
    pub fn lineage(&self) -> Result<Vec<String>, MetaError> {
        let prefix = format!("{LINEAGE}{SEP}");
        let mut out: Vec<String> = self
            .cluster_keys("settings")?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Records this store's id in the lineage and its shard count (at store creation).
    pub(crate) fn record_creation(
        &mut self,
        store_id: &str,
        wall_ms: u64,
    ) -> Result<Commit, MetaError> {
        let time = self.clock.tick(wall_ms);
        let node = self.config.node_id.to_string();
        let shards = u64::from(self.shards());
        let key = sub(LINEAGE, store_id);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("settings"), key.as_str(), node.into_bytes())?;
            tx.put(m.get("settings"), "shards", shards)?;
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
        let forgotten_key = sub(node.as_str(), FORGOTTEN);
        let forgotten = self.cluster_value("controllers", &forgotten_key)?.is_some();
        if let Some(e) = &existing
            && e.grpc_addr == grpc_addr
            && e.p2p_addrs == p2p_addrs
            && !forgotten
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
            // A controller that runs again is no longer forgotten.
            if forgotten {
                tx.delete(m.get("controllers"), forgotten_key.as_str())?;
            }
            Ok(())
        })?;
        Ok(Some(commit))
    }

    /// Marks a controller forgotten (gone for good): GC stops waiting to be in sync with it.
    /// `NotFound` if the document does not know it; `None` if already forgotten.
    pub fn forget_controller(
        &mut self,
        node: &str,
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        let node = NodeId::new(node)?;
        if node == self.config.node_id {
            return Err(MetaError::invalid(
                "controller",
                "a controller cannot forget itself; run forget-controller on another one",
            ));
        }
        if self.cluster_value("controllers", node.as_str())?.is_none() {
            return Err(MetaError::NotFound(format!("controller {node}")));
        }
        let key = sub(node.as_str(), FORGOTTEN);
        if self.cluster_value("controllers", &key)?.is_some() {
            return Ok(None);
        }
        let time = self.clock.tick(wall_ms);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(
                m.get("controllers"),
                key.as_str(),
                time.0.to_be_bytes().to_vec(),
            )?;
            Ok(())
        })?;
        Ok(Some(commit))
    }

    pub fn controllers(&self) -> Result<Vec<ControllerView>, MetaError> {
        let mut out = Vec::new();
        for node in self.cluster_keys("controllers")? {
            if node.contains(SEP) {
                continue;
            }
            let Some(bytes) = self.cluster_value("controllers", &node)? else {
                continue;
            };
            let rec: ControllerRecord = decode_msg(&bytes).map_err(|e| corrupt(&node, e))?;
            let forgotten = self
                .cluster_value("controllers", &sub(&node, FORGOTTEN))?
                .is_some();
            out.push(ControllerView {
                node,
                grpc_addr: rec.grpc_addr,
                p2p_addrs: rec.p2p_addrs,
                first_seen: Timestamp(rec.first_seen),
                forgotten,
            });
        }
        Ok(out)
    }

    fn chunkserver(&self, id: &str) -> Result<Option<ChunkserverRecord>, MetaError> {
        let key = sub(id, MEMBER);
        match self.cluster_value("chunkservers", &key)? {
            Some(b) => ChunkserverRecord::decode(&b)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
            None => Ok(None),
        }
    }

    fn chunkserver_state(&self, id: &str) -> Result<ChunkserverState, MetaError> {
        let key = sub(id, STATE);
        match self.cluster_value("chunkservers", &key)? {
            Some(b) => std::str::from_utf8(&b)
                .map_err(|_| corrupt(&key, "not UTF-8"))
                .and_then(|t| ChunkserverState::parse(t).map_err(|e| corrupt(&key, e))),
            None => Ok(ChunkserverState::Active),
        }
    }

    /// Record a chunkserver's address and zone. Writes only when something changed; never
    /// touches its state.
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
        let rec = ChunkserverRecord {
            address: address.to_owned(),
            zone: zone.to_owned(),
        };
        if self.chunkserver(id)?.as_ref() == Some(&rec) {
            return Ok(None);
        }
        let time = self.clock.tick(wall_ms);
        let key = sub(id, MEMBER);
        let bytes = rec.encode();
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(m.get("chunkservers"), key.as_str(), bytes)?;
            Ok(())
        })?;
        Ok(Some(commit))
    }

    /// Set a chunkserver's administrative state; `NotFound` if unknown, `None` if unchanged.
    pub fn set_chunkserver_state(
        &mut self,
        id: &str,
        state: ChunkserverState,
        wall_ms: u64,
    ) -> Result<Option<Commit>, MetaError> {
        names::validate_text_field("chunkserver id", id)?;
        if self.chunkserver(id)?.is_none() {
            return Err(MetaError::NotFound(format!("chunkserver {id:?}")));
        }
        if self.chunkserver_state(id)? == state {
            return Ok(None);
        }
        let time = self.clock.tick(wall_ms);
        let key = sub(id, STATE);
        let ((), commit) = self.commit(DocId::Cluster, time, |tx, m| {
            tx.put(
                m.get("chunkservers"),
                key.as_str(),
                state.name().as_bytes().to_vec(),
            )?;
            Ok(())
        })?;
        Ok(Some(commit))
    }

    /// Retires a draining chunkserver (drain completion). Writes nothing unless the server is
    /// still draining here, so an undrain that reached this replica first is never undone.
    pub fn finish_drain(&mut self, id: &str, wall_ms: u64) -> Result<Option<Commit>, MetaError> {
        if self.chunkserver(id)?.is_none()
            || self.chunkserver_state(id)? != ChunkserverState::Draining
        {
            return Ok(None);
        }
        self.set_chunkserver_state(id, ChunkserverState::Removed, wall_ms)
    }

    pub fn chunkservers(&self) -> Result<Vec<ChunkserverView>, MetaError> {
        let suffix = format!("{SEP}{MEMBER}");
        let mut out = Vec::new();
        for key in self.cluster_keys("chunkservers")? {
            let Some(id) = key.strip_suffix(&suffix) else {
                continue;
            };
            let Some(rec) = self.chunkserver(id)? else {
                continue;
            };
            out.push(ChunkserverView {
                id: id.to_owned(),
                address: rec.address,
                zone: rec.zone,
                state: self.chunkserver_state(id)?,
            });
        }
        Ok(out)
    }
}
