//! Session tokens signed with a cluster secret.
//!
//! A token is `rc1:<user>:<expires_ms>:<key id>:<hex HMAC-SHA256>` where the MAC covers
//! everything before the last colon. Any controller holding the cluster document can check a
//! token with no session state, and because every controller adds its own secret to the
//! document (instead of racing to create "the" secret), tokens minted on both sides of a
//! partition stay valid after it heals.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "rc1";

/// How long a session token lasts by default (`--token-ttl-ms`).
pub const DEFAULT_TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest a controller may be configured to issue tokens for.
pub const MAX_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Slack for clocks when refusing a token that claims to live longer than any may.
const TTL_SLACK_MS: u64 = 24 * 3600 * 1000;

/// Longest token we try to parse; anything longer is malformed.
const MAX_TOKEN_LEN: usize = 512;

/// Why a token was refused. Messages are shown to users, so each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token: log in again")]
    Malformed,
    #[error("token signed with an unknown key: log in again")]
    UnknownKey,
    #[error("token signature is invalid: log in again")]
    BadSignature,
    #[error("token expired: log in again")]
    Expired,
}

/// A user's identity proven by a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub expires_ms: u64,
}

/// The name a token is revoked under: a digest, so the document never holds a usable token.
pub fn digest(token: &str) -> String {
    hex::encode(&blake3::hash(token.as_bytes()).as_bytes()[..16])
}

/// Mints a token for `user` valid until `expires_ms`, signed with secret `key_id`.
pub fn issue(user: &str, expires_ms: u64, key_id: &str, key: &[u8]) -> String {
    let payload = format!("{PREFIX}:{user}:{expires_ms}:{key_id}");
    let tag = sign(key, &payload);
    format!("{payload}:{}", hex::encode(tag))
}

/// Checks `token` against the cluster's secrets at time `now_ms`.
///
/// `secrets` yields `(key id, key)` pairs. User names cannot contain `:` (they are validated
/// at registration), so the fields split unambiguously.
pub fn verify<'a>(
    token: &str,
    secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    now_ms: u64,
) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let (payload, tag_hex) = token.rsplit_once(':').ok_or(AuthError::Malformed)?;
    let mut fields = payload.split(':');
    let (Some(prefix), Some(user), Some(expires), Some(key_id), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    if prefix != PREFIX || user.is_empty() {
        return Err(AuthError::Malformed);
    }
    let expires_ms: u64 = expires.parse().map_err(|_| AuthError::Malformed)?;
    let tag = hex::decode(tag_hex).map_err(|_| AuthError::Malformed)?;
    let key = secrets
        .into_iter()
        .find(|(id, _)| *id == key_id)
        .map(|(_, k)| k)
        .ok_or(AuthError::UnknownKey)?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| AuthError::UnknownKey)?;
    mac.update(payload.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&tag)
        .map_err(|_| AuthError::BadSignature)?;
    if now_ms >= expires_ms {
        return Err(AuthError::Expired);
    }
    // No controller issues tokens for longer; such a token was not made by this cluster's
    // rules (a misconfigured node, or a clock far ahead).
    if expires_ms > now_ms.saturating_add(MAX_TOKEN_TTL_MS + TTL_SLACK_MS) {
        return Err(AuthError::Malformed);
    }
    Ok(Claims {
        user: user.to_owned(),
        expires_ms,
    })
}

/// The token keys one controller knows: the one it signs with and every controller's (from the
/// cluster document), refreshed when a token names a key not seen yet.
#[derive(Debug)]
pub struct Tokens {
    signing: crate::cluster::Secret,
    known: parking_lot::RwLock<Vec<crate::cluster::Secret>>,
    ttl_ms: u64,
    /// The key derives from the cluster secret: no key is ever read from the documents.
    fixed: bool,
}

impl Tokens {
    pub fn new(
        signing: crate::cluster::Secret,
        known: Vec<crate::cluster::Secret>,
        ttl_ms: u64,
    ) -> Self {
        Tokens {
            signing,
            known: parking_lot::RwLock::new(known),
            ttl_ms,
            fixed: false,
        }
    }

    /// Tokens signed with the key derived from the cluster secret: the same on every
    /// controller, and never stored in or read from the replicated documents.
    pub fn from_cluster_secret(secret: &redcloud_proto::trust::ClusterSecret, ttl_ms: u64) -> Self {
        let key = crate::cluster::Secret {
            id: "cluster".into(),
            key: secret.token_key(),
        };
        Tokens {
            signing: key.clone(),
            known: parking_lot::RwLock::new(vec![key]),
            ttl_ms,
            fixed: true,
        }
    }

    /// A token for `user`, and when it expires.
    pub fn issue(&self, user: &str, now_ms: u64) -> (String, u64) {
        let expires_ms = now_ms.saturating_add(self.ttl_ms);
        let key = &self.signing;
        (issue(user, expires_ms, &key.id, &key.key), expires_ms)
    }

    /// Checks `token` with the keys known now.
    pub fn check(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        let known = self.known.read();
        verify(
            token,
            known.iter().map(|s| (s.id.as_str(), &s.key[..])),
            now_ms,
        )
    }

    /// Replaces the known keys (after reading the cluster document again).
    pub fn refresh(&self, known: Vec<crate::cluster::Secret>) {
        if self.fixed {
            return;
        }
        *self.known.write() = known;
    }
}

fn sign(key: &[u8], payload: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(payload.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &[u8] = b"0123456789abcdef0123456789abcdef";
    const K2: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn secrets() -> Vec<(&'static str, &'static [u8])> {
        vec![("k1", K1), ("k2", K2)]
    }

    #[test]
    fn round_trip_with_either_key() {
        for (id, key) in secrets() {
            let t = issue("alice", 2_000, id, key);
            let c = verify(&t, secrets(), 1_000).expect("valid token");
            assert_eq!(c.user, "alice");
            assert_eq!(c.expires_ms, 2_000);
        }
    }

    #[test]
    fn expired_token_is_refused() {
        let t = issue("alice", 2_000, "k1", K1);
        assert_eq!(verify(&t, secrets(), 2_000), Err(AuthError::Expired));
        // A token claiming to live longer than any controller may issue is refused.
        let far = issue(
            "alice",
            1_000 + MAX_TOKEN_TTL_MS + TTL_SLACK_MS + 1,
            "k1",
            K1,
        );
        assert_eq!(verify(&far, secrets(), 1_000), Err(AuthError::Malformed));
        let longest = issue("alice", 1_000 + MAX_TOKEN_TTL_MS, "k1", K1);
        assert!(verify(&longest, secrets(), 1_000).is_ok());
    }

    #[test]
    fn tampered_user_is_refused() {
        let t = issue("alice", 2_000, "k1", K1);
        let forged = t.replacen("alice", "mallory", 1);
        assert_eq!(
            verify(&forged, secrets(), 1_000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_expiry_is_refused() {
        let t = issue("alice", 2_000, "k1", K1);
        let forged = t.replacen(":2000:", ":9999999:", 1);
        assert_eq!(
            verify(&forged, secrets(), 1_000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let t = issue("alice", 2_000, "k9", K1);
        assert_eq!(verify(&t, secrets(), 1_000), Err(AuthError::UnknownKey));
    }

    #[test]
    fn wrong_key_is_refused() {
        // Signed with k2's bytes but claiming k1.
        let t = issue("alice", 2_000, "k1", K2);
        assert_eq!(verify(&t, secrets(), 1_000), Err(AuthError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "rc1",
            "rc1:alice",
            "rc2:alice:1:k1:00",
            "rc1::5:k1:00",
            "rc1:alice:notanumber:k1:00",
            "rc1:alice:5:k1:zz",
            "rc1:a:b:5:k1:00",
        ] {
            assert_eq!(
                verify(bad, secrets(), 0),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(&long, secrets(), 0), Err(AuthError::Malformed));
    }
}
