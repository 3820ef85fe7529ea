//! Network configuration, the protocol names derived from the cluster name, and the node key.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use libp2p::{Multiaddr, identity::Keypair};

use crate::{Error, bootstrap};

/// Default cap on one gossip message's payload: gossipsub's own default. Larger changes are
/// announced by heads and pulled by sync instead (DESIGN §4).
pub const DEFAULT_MAX_GOSSIP_SIZE: usize = 64 * 1024;
/// Default cap on one request or response payload.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 16 * 1024 * 1024;
/// Largest accepted `max_gossip_size`: gossip is for small news, not bulk data.
pub const MAX_GOSSIP_SIZE_LIMIT: usize = 8 * 1024 * 1024;
/// Longest accepted cluster name.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;

/// Everything the network layer needs. Build with [`Config::new`], adjust fields, then
/// [`Config::validate`] (which [`crate::spawn`] also calls).
#[derive(Debug, Clone)]
pub struct Config {
    /// Cluster name; scopes the gossip topic and every protocol name, so two clusters on one
    /// network never exchange data. Letters, digits, `.`, `_`, `-`.
    pub cluster: String,
    /// This node's identity; see [`load_or_create_keypair`].
    pub keypair: Keypair,
    /// Addresses to listen on (default `/ip4/0.0.0.0/tcp/0`; tests use `/ip4/127.0.0.1/tcp/0`).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap entries: multiaddrs (with or without `/p2p/<id>`), `host:port`, or DNS names
    /// (optionally `name:port`) that may resolve to many hosts. See [`crate::bootstrap`].
    pub bootstrap: Vec<String>,
    /// Discover peers on the local link with mDNS.
    pub mdns: bool,
    /// Largest gossip payload; bigger publishes fail with [`Error::TooLarge`].
    pub max_gossip_size: usize,
    /// Largest request and response payload, enforced on both send and receive.
    pub max_request_size: usize,
    /// Deadline for a request's response (inbound and outbound).
    pub request_timeout: Duration,
    /// First redial delay after a connection to a known peer closes or a dial fails.
    pub redial_min: Duration,
    /// Ceiling of the exponential redial backoff.
    pub redial_max: Duration,
    /// Gossipsub heartbeat (mesh maintenance). Gossipsub's 1 s default is slow for a cluster.
    pub gossip_heartbeat: Duration,
    /// Delay before the first heartbeat (gossipsub's default of 5 s delays the first mesh).
    pub gossip_initial_delay: Duration,
    /// How long a connection with no active protocol stays open. Long: controllers keep their
    /// connections up so gossip and sync never wait for a dial.
    pub idle_connection_timeout: Duration,
    /// Deadline for dialing and upgrading one connection.
    pub dial_timeout: Duration,
    /// Ping period; a failed ping closes the connection so the redial loop takes over.
    pub ping_interval: Duration,
    /// Ping deadline.
    pub ping_timeout: Duration,
    /// Period of the Kademlia bootstrap (random walk) once peers are known.
    pub kad_bootstrap_interval: Duration,
    /// How often DNS bootstrap names are resolved again (new hosts behind an alias).
    pub dns_refresh: Duration,
    /// Pre-shared key of a private network: every connection first proves it (libp2p pnet),
    /// so a peer without the key cannot even complete the transport handshake. `None`: an
    /// open network.
    pub private_key: Option<[u8; 32]>,
}

impl Config {
    /// A config with defaults that work for a small cluster.
    pub fn new(cluster: impl Into<String>, keypair: Keypair) -> Self {
        Config {
            cluster: cluster.into(),
            keypair,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mdns: true,
            max_gossip_size: DEFAULT_MAX_GOSSIP_SIZE,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            request_timeout: Duration::from_secs(30),
            redial_min: Duration::from_millis(250),
            redial_max: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(300),
            gossip_initial_delay: Duration::from_millis(50),
            idle_connection_timeout: Duration::from_secs(3600),
            dial_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(3),
            ping_timeout: Duration::from_secs(10),
            kad_bootstrap_interval: Duration::from_secs(30),
            dns_refresh: Duration::from_secs(30),
            private_key: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, why: String| Err(Error::Config(format!("{field}: {why}")));
        if self.cluster.is_empty() || self.cluster.len() > MAX_CLUSTER_NAME_LEN {
            return bad(
                "cluster",
                format!("must be 1..={MAX_CLUSTER_NAME_LEN} characters"),
            );
        }
        if let Some(c) = self
            .cluster
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return bad(
                "cluster",
                format!("character {c:?} not allowed (use [A-Za-z0-9._-])"),
            );
        }
        if self.listen.is_empty() {
            return bad("listen", "at least one listen address is required".into());
        }
        if self.max_gossip_size == 0 || self.max_gossip_size > MAX_GOSSIP_SIZE_LIMIT {
            return bad(
                "max_gossip_size",
                format!("must be 1..={MAX_GOSSIP_SIZE_LIMIT} bytes"),
            );
        }
        if self.max_request_size == 0 || self.max_request_size > u32::MAX as usize {
            return bad(
                "max_request_size",
                format!("must be 1..={} bytes", u32::MAX),
            );
        }
        for (field, value) in [
            ("request_timeout", self.request_timeout),
            ("redial_min", self.redial_min),
            ("redial_max", self.redial_max),
            ("gossip_heartbeat", self.gossip_heartbeat),
            ("idle_connection_timeout", self.idle_connection_timeout),
            ("dial_timeout", self.dial_timeout),
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
            ("kad_bootstrap_interval", self.kad_bootstrap_interval),
            ("dns_refresh", self.dns_refresh),
        ] {
            if value.is_zero() {
                return bad(field, "must be greater than zero".into());
            }
        }
        if self.redial_min > self.redial_max {
            return bad("redial_min", "must not exceed redial_max".into());
        }
        for entry in &self.bootstrap {
            if let Err(e) = bootstrap::parse(entry) {
                return bad("bootstrap", e.to_string());
            }
        }
        Ok(())
    }

    /// Gossip topic carrying the cluster's changes.
    pub fn topic(&self) -> String {
        format!("redcloud/{}/changes", self.cluster)
    }

    /// Request-response protocol carrying Automerge sync.
    pub fn sync_protocol(&self) -> String {
        format!("/redcloud/{}/sync/1", self.cluster)
    }

    /// Cluster-private Kademlia protocol.
    pub fn kad_protocol(&self) -> String {
        format!("/redcloud/{}/kad/1", self.cluster)
    }

    /// Gossipsub protocol prefix (gossipsub appends `/1.1.0` and `/1.0.0`).
    pub fn gossip_protocol_prefix(&self) -> String {
        format!("/redcloud/{}/meshsub", self.cluster)
    }

    /// Identify protocol version; a peer announcing another one belongs to another cluster.
    pub fn identify_version(&self) -> String {
        format!("/redcloud/{}/1", self.cluster)
    }
}

/// Loads the node key from `path`, or creates an ed25519 key there (protobuf encoding, file
/// mode 0600, written to a temporary file then renamed so a crash never leaves half a key).
pub fn load_or_create_keypair(path: &Path) -> Result<Keypair, Error> {
    let err = |reason: String| Error::Keypair {
        path: path.display().to_string(),
        reason,
    };
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                    "node key is readable by other users; chmod 600 it");
            }
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(format!("not a key: {e}")))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let tmp = path.with_extension("tmp");
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok(keypair)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new("test", Keypair::generate_ed25519())
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("cluster", Box::new(|c| c.cluster = String::new())),
            ("cluster", Box::new(|c| c.cluster = "a/b".into())),
            ("listen", Box::new(|c| c.listen.clear())),
            ("max_gossip_size", Box::new(|c| c.max_gossip_size = 0)),
            ("max_request_size", Box::new(|c| c.max_request_size = 0)),
            (
                "request_timeout",
                Box::new(|c| c.request_timeout = Duration::ZERO),
            ),
            (
                "redial_min",
                Box::new(|c| c.redial_min = Duration::from_secs(60)),
            ),
            (
                "bootstrap",
                Box::new(|c| c.bootstrap = vec!["host:notaport".into()]),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "{msg:?} should name {field}");
        }
    }

    #[test]
    fn names_are_scoped_by_cluster() {
        let c = config();
        assert_eq!(c.sync_protocol(), "/redcloud/test/sync/1");
        assert_eq!(c.kad_protocol(), "/redcloud/test/kad/1");
        assert_eq!(c.topic(), "redcloud/test/changes");
    }

    #[test]
    fn keypair_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        let first = load_or_create_keypair(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_keypair(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
    }

    #[test]
    fn corrupt_keypair_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::write(&path, b"garbage").unwrap();
        let msg = load_or_create_keypair(&path).unwrap_err().to_string();
        assert!(
            msg.contains("node.key") && msg.contains("not a key"),
            "{msg}"
        );
    }
}
