//! The cluster's trust boundary on the wire: the cluster secret, the keys derived from it,
//! and the credentials gRPC calls carry.
//!
//! Every controller and chunkserver of a cluster holds one 256-bit secret (`redcloud secret`
//! makes one; nodes read it from `--secret-file`). Nothing secret is ever sent: each purpose
//! gets its own key, derived with BLAKE3's key derivation from the secret, so a credential
//! of one kind says nothing about the others or the secret.
//!
//! | credential | header | who holds it | what it opens |
//! |---|---|---|---|
//! | node credential | `x-redcloud-node` | controllers, chunkservers | every internal RPC: heartbeat, HasChunks, DeleteChunk, ListChunks, ReplicateChunk, Info, chunk reads between servers |
//! | admin credential | `x-redcloud-admin` | operators with the secret file | drain, undrain, forget-controller, set-replication |
//! | chunk grant | `x-redcloud-grant` | a client, from PlanUpload (write) or Resolve (read) | one chunk, one access, until it expires |
//! | session token | `authorization` | a logged-in user | that user's files through the client API |
//!
//! A node started with `--insecure` has no secret: its [`Gate`] lets everything through, and
//! its logs and `status` say so.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Header of the node credential (controllers and chunkservers calling each other).
pub const NODE_HEADER: &str = "x-redcloud-node";
/// Header of the admin credential.
pub const ADMIN_HEADER: &str = "x-redcloud-admin";
/// Header of a chunk grant.
pub const GRANT_HEADER: &str = "x-redcloud-grant";

const SECRET_PREFIX: &str = "redcloud-secret-v1:";

/// Why a secret could not be read.
#[derive(Debug)]
pub struct SecretError(pub String);

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecretError {}

/// The cluster secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A new random secret from the operating system's generator.
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| SecretError(format!("cannot read /dev/urandom: {e}")))?;
        Ok(ClusterSecret(key))
    }

    /// A secret from fixed bytes (tests and benchmarks).
    pub fn from_bytes(key: [u8; 32]) -> ClusterSecret {
        ClusterSecret(key)
    }

    /// The text form `redcloud secret` prints and secret files hold.
    pub fn to_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{SECRET_PREFIX}{hex}")
    }

    pub fn parse(text: &str) -> Result<ClusterSecret, SecretError> {
        let bad = || {
            SecretError(format!(
                "not a redcloud secret (expected `{SECRET_PREFIX}` and 64 hex digits; make one \
                 with `redcloud secret`)"
            ))
        };
        let hex = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ClusterSecret(key))
    }

    /// Reads a secret file. Refuses one that others may read.
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| SecretError(format!("cannot read secret file {}: {e}", path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretError(format!(
                "secret file {} is readable by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
        if meta.len() > 4096 {
            return Err(SecretError(format!(
                "{} is too large for a secret",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecretError(format!("cannot read secret file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| SecretError(format!("{}: {e}", path.display())))
    }

    /// Writes the secret to a new file only its owner can read (never overwrites).
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| SecretError(format!("cannot create {}: {e}", path.display())))?;
        writeln!(f, "{}", self.to_text())
            .and_then(|_| f.sync_all())
            .map_err(|e| SecretError(format!("cannot write {}: {e}", path.display())))
    }

    /// The key for one purpose.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(&format!("redcloud 2026-12 {purpose}"), &self.0)
    }

    /// The credential controllers and chunkservers present to each other.
    pub fn node_credential(&self) -> String {
        hex(&self.derive("node credential"))
    }

    /// The credential of operators (admin RPCs).
    pub fn admin_credential(&self) -> String {
        hex(&self.derive("admin credential"))
    }

    /// The key that signs chunk grants.
    pub fn grant_key(&self) -> GrantKey {
        GrantKey(self.derive("chunk grant"))
    }

    /// The key that signs session tokens.
    pub fn token_key(&self) -> [u8; 32] {
        self.derive("session token")
    }

    /// The pre-shared key of the controllers' private libp2p network.
    pub fn p2p_key(&self) -> [u8; 32] {
        self.derive("p2p private network")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two byte strings in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a server lets in: the credentials it expects, or nothing to check (`--insecure`).
#[derive(Clone, Default)]
pub struct Gate {
    node: Option<String>,
    admin: Option<String>,
    grants: Option<GrantKey>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("secure", &self.node.is_some())
            .finish()
    }
}

impl Gate {
    /// The gate of a node holding `secret`; `None` lets everything in (insecure mode).
    pub fn new(secret: Option<&ClusterSecret>) -> Gate {
        match secret {
            Some(s) => Gate {
                node: Some(s.node_credential()),
                admin: Some(s.admin_credential()),
                grants: Some(s.grant_key()),
            },
            None => Gate::default(),
        }
    }

    pub fn secure(&self) -> bool {
        self.node.is_some()
    }

    fn header<'a>(md: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a [u8]> {
        md.get(name).map(|v| v.as_bytes())
    }

    /// The caller is a node of this cluster.
    pub fn is_node(&self, md: &tonic::metadata::MetadataMap) -> bool {
        match &self.node {
            None => true,
            Some(want) => Self::header(md, NODE_HEADER).is_some_and(|h| same(h, want.as_bytes())),
        }
    }

    /// Refuses a caller that is not a node of this cluster.
    pub fn require_node(&self, md: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
        if self.is_node(md) {
            Ok(())
        } else {
            Err(tonic::Status::unauthenticated(
                "this call is for cluster nodes: it needs the node credential derived from the \
                 cluster secret",
            ))
        }
    }

    /// Refuses a caller without the admin credential.
    pub fn require_admin(&self, md: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
        let ok = match &self.admin {
            None => true,
            Some(want) => Self::header(md, ADMIN_HEADER).is_some_and(|h| same(h, want.as_bytes())),
        };
        if ok {
            Ok(())
        } else {
            Err(tonic::Status::unauthenticated(
                "admin operation: run it with the cluster secret (--secret-file or \
                 $REDCLOUD_SECRET_FILE)",
            ))
        }
    }

    /// Allows `access` to `chunk` for a node, or for a caller holding a valid grant.
    pub fn require_grant(
        &self,
        md: &tonic::metadata::MetadataMap,
        access: Access,
        chunk: &[u8],
        now_ms: u64,
    ) -> Result<(), tonic::Status> {
        self.require_grant_in(md, Self::header(md, GRANT_HEADER), access, chunk, now_ms)
    }

    /// [`Gate::require_grant`] with the grant taken from the message instead of a header: a
    /// call that writes many chunks carries one grant per chunk.
    pub fn require_grant_in(
        &self,
        md: &tonic::metadata::MetadataMap,
        grant: Option<&[u8]>,
        access: Access,
        chunk: &[u8],
        now_ms: u64,
    ) -> Result<(), tonic::Status> {
        let Some(key) = &self.grants else {
            return Ok(());
        };
        if self.is_node(md) {
            return Ok(());
        }
        let Some(grant) = grant else {
            return Err(tonic::Status::unauthenticated(format!(
                "{} needs a grant from a controller ({} for this chunk)",
                access.verb(),
                access.rpc()
            )));
        };
        let grant = std::str::from_utf8(grant)
            .map_err(|_| tonic::Status::unauthenticated("malformed grant"))?;
        key.check(grant, access, chunk, now_ms)
            .map_err(|e| tonic::Status::permission_denied(e.to_string()))
    }

    /// The metadata of a call from this node to another (empty in insecure mode).
    pub fn node_metadata(&self) -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        if let Some(c) = &self.node
            && let Ok(v) = c.parse()
        {
            md.insert(NODE_HEADER, v);
        }
        md
    }

    /// Wraps `msg` in a request carrying this node's credential.
    pub fn node_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        *r.metadata_mut() = self.node_metadata();
        r
    }

    /// The grant key (to sign grants), when secure.
    pub fn grant_key(&self) -> Option<&GrantKey> {
        self.grants.as_ref()
    }
}

/// Adds fixed credential headers (a node's, an operator's) to every call of a gRPC client.
#[derive(Clone, Debug, Default)]
pub struct Credential(pub tonic::metadata::MetadataMap);

impl tonic::service::Interceptor for Credential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for kv in self.0.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                req.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(req)
    }
}

/// The admin credential's metadata for `secret`.
pub fn admin_metadata(secret: &ClusterSecret) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = secret.admin_credential().parse() {
        md.insert(ADMIN_HEADER, v);
    }
    md
}

/// The metadata carrying `grant` (empty for an empty grant: insecure clusters give none).
pub fn grant_metadata(grant: &str) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    if !grant.is_empty()
        && let Ok(v) = grant.parse()
    {
        md.insert(GRANT_HEADER, v);
    }
    md
}

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn tag(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Access::Read => "reading a chunk",
            Access::Write => "writing a chunk",
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Access::Read => "Resolve answers one",
            Access::Write => "PlanUpload answers one",
        }
    }
}

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    Malformed,
    WrongAccess,
    Expired,
    BadSignature,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrantError::Malformed => "malformed grant",
            GrantError::WrongAccess => "the grant is for another kind of access",
            GrantError::Expired => "the grant expired: ask the controller again",
            GrantError::BadSignature => "the grant is not valid for this chunk",
        })
    }
}

/// The key that signs chunk grants: `g1:<r|w>:<expires ms>:<hex MAC>`, the MAC (BLAKE3 keyed
/// hash, 128 bits) covering the access, the expiry and the chunk id.
#[derive(Clone)]
pub struct GrantKey([u8; 32]);

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

impl GrantKey {
    fn mac(&self, access: Access, expires_ms: u64, chunk: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(access.tag().as_bytes());
        h.update(&expires_ms.to_be_bytes());
        h.update(chunk);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// A grant of `access` to `chunk` until `expires_ms`.
    pub fn sign(&self, access: Access, chunk: &[u8], expires_ms: u64) -> String {
        format!(
            "g1:{}:{expires_ms}:{}",
            access.tag(),
            hex(&self.mac(access, expires_ms, chunk))
        )
    }

    pub fn check(
        &self,
        grant: &str,
        access: Access,
        chunk: &[u8],
        now_ms: u64,
    ) -> Result<(), GrantError> {
        if grant.len() > 128 {
            return Err(GrantError::Malformed);
        }
        let mut parts = grant.split(':');
        let (Some("g1"), Some(tag), Some(expires), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(GrantError::Malformed);
        };
        if tag != access.tag() {
            return Err(GrantError::WrongAccess);
        }
        let expires_ms: u64 = expires.parse().map_err(|_| GrantError::Malformed)?;
        if mac.len() != 32 {
            return Err(GrantError::Malformed);
        }
        let want = hex(&self.mac(access, expires_ms, chunk));
        if !same(mac.as_bytes(), want.as_bytes()) {
            return Err(GrantError::BadSignature);
        }
        if expires_ms < now_ms {
            return Err(GrantError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> ClusterSecret {
        ClusterSecret::from_bytes([b; 32])
    }

    #[test]
    fn secrets_round_trip_and_bad_text_is_refused() {
        let s = ClusterSecret::generate().unwrap();
        assert_eq!(ClusterSecret::parse(&s.to_text()).unwrap(), s);
        assert_ne!(s, ClusterSecret::generate().unwrap());
        for bad in ["", "redcloud-secret-v1:", "redcloud-secret-v1:zz", "abc"] {
            assert!(ClusterSecret::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{s:?}").contains(&s.to_text()[20..]));
    }

    #[test]
    fn derived_credentials_differ_by_purpose_and_secret() {
        let a = secret(1);
        assert_ne!(a.node_credential(), a.admin_credential());
        assert_ne!(a.node_credential(), secret(2).node_credential());
    }

    #[test]
    fn grants_open_one_chunk_for_one_access_until_they_expire() {
        let k = secret(3).grant_key();
        let g = k.sign(Access::Read, &[7; 32], 1_000);
        assert_eq!(k.check(&g, Access::Read, &[7; 32], 999), Ok(()));
        assert_eq!(
            k.check(&g, Access::Read, &[8; 32], 999),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            k.check(&g, Access::Write, &[7; 32], 999),
            Err(GrantError::WrongAccess)
        );
        assert_eq!(
            k.check(&g, Access::Read, &[7; 32], 1_001),
            Err(GrantError::Expired)
        );
        let other = secret(4).grant_key();
        assert_eq!(
            other.check(&g, Access::Read, &[7; 32], 0),
            Err(GrantError::BadSignature)
        );
        // Tampered expiry.
        let forged = g.replace(":1000:", ":9999:");
        assert_eq!(
            k.check(&forged, Access::Read, &[7; 32], 2_000),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            k.check("g1:r:x:00", Access::Read, &[7; 32], 0),
            Err(GrantError::Malformed)
        );
    }

    #[test]
    fn an_insecure_gate_lets_everything_in_and_a_secure_one_checks() {
        let md = tonic::metadata::MetadataMap::new();
        assert!(Gate::new(None).require_node(&md).is_ok());
        let g = Gate::new(Some(&secret(5)));
        assert!(g.require_node(&md).is_err());
        assert!(g.require_admin(&md).is_err());
        assert!(g.require_node(&g.node_metadata()).is_ok());
        assert!(g.require_grant(&md, Access::Read, &[1; 32], 0).is_err());
        let other = Gate::new(Some(&secret(6)));
        assert!(g.require_node(&other.node_metadata()).is_err());
    }

    #[test]
    fn secret_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let s = ClusterSecret::generate().unwrap();
        s.write_new(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ClusterSecret::load(&p).unwrap(), s);
        assert!(
            s.write_new(&p).is_err(),
            "an existing secret is never replaced"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            ClusterSecret::load(&p).is_err(),
            "world-readable secret refused"
        );
    }
}
