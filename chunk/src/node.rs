//! A chunkserver's configuration and identity: the id kept in its data directory and the
//! address it advertises.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::heartbeat::DEFAULT_HEARTBEAT_INTERVAL;
use crate::inventory_log::DEFAULT_INVENTORY_LOG_CAPACITY;
use crate::scrub::DEFAULT_SCRUB_RATE;

/// Default address to listen on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7200";
/// Default failure zone.
pub const DEFAULT_ZONE: &str = "default";
/// File in the data directory holding the node id.
pub const NODE_ID_FILE: &str = "node-id";
/// Directory in the data directory holding the RocksDB store.
pub const STORE_DIR: &str = "chunks";
/// Shortest heartbeat interval accepted.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Longest heartbeat interval accepted.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);
/// Largest inventory log accepted (about 1 GB of memory).
pub const MAX_INVENTORY_LOG_CAPACITY: usize = 10_000_000;

/// Who this chunkserver is, as reported by `Info`.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Stable node id (`cs-<host>-<hex>`).
    pub id: String,
    /// `host:port` where clients reach this server.
    pub address: String,
    /// Failure zone, for placement.
    pub zone: String,
}

/// Everything a chunkserver needs to start. `new` gives defaults that work.
#[derive(Debug, Clone)]
pub struct ChunkserverConfig {
    /// Where the node id and the chunk store live.
    pub data_dir: PathBuf,
    /// Address the caller binds the listener to (recorded for logs; `run` takes a listener).
    pub listen: SocketAddr,
    /// `host:port` that clients and controllers should dial; detected when `None`.
    pub advertise: Option<String>,
    /// Controllers to heartbeat (`host:port`); more are learned from their answers. Empty:
    /// no heartbeat.
    pub controllers: Vec<String>,
    /// Time between heartbeats to each controller.
    pub heartbeat_interval: Duration,
    /// Inventory changes remembered for the heartbeat's deltas; a controller further behind
    /// pulls the whole inventory instead.
    pub inventory_log_capacity: usize,
    /// Failure zone, for placement.
    pub zone: String,
    /// Most chunk bytes to store; `None`: the free space of the data directory's filesystem.
    pub capacity: Option<u64>,
    /// Scrub hashing rate in bytes per second; 0 disables scrubbing.
    pub scrub_rate: u64,
    /// Node id; `None`: the one persisted in the data directory (created on first start).
    pub id: Option<String>,
    /// The cluster secret (`--secret-file`): internal calls and chunk grants are checked
    /// against keys derived from it.
    pub secret: Option<redcloud_proto::trust::ClusterSecret>,
    /// Certificates an operator brings instead of the ones derived from the secret.
    pub tls: redcloud_proto::tls::TlsFiles,
    /// Run without a secret: every call is let in. Flagged in the logs.
    pub insecure: bool,
}

/// A configuration field that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunkserver config: {field}: {problem}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ChunkserverConfig {
    /// Defaults for a chunkserver keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            advertise: None,
            controllers: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            inventory_log_capacity: DEFAULT_INVENTORY_LOG_CAPACITY,
            zone: DEFAULT_ZONE.to_owned(),
            capacity: None,
            scrub_rate: DEFAULT_SCRUB_RATE,
            id: None,
            secret: None,
            tls: redcloud_proto::tls::TlsFiles::default(),
            insecure: false,
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem: &str| {
            Err(ConfigError {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if self.secret.is_none() && !self.insecure {
            return bad(
                "secret",
                "no cluster secret: make one with `redcloud secret > FILE` (chmod 600), pass \
                 --secret-file FILE (or set $REDCLOUD_SECRET_FILE), or start with --insecure",
            );
        }
        if !is_token(&self.zone) {
            return bad("zone", "must be non-empty letters, digits, '.', '_' or '-'");
        }
        if self.capacity == Some(0) {
            return bad("capacity", "must be greater than 0");
        }
        if let Some(id) = &self.id
            && !is_token(id)
        {
            return bad("id", "must be non-empty letters, digits, '.', '_' or '-'");
        }
        if let Some(advertise) = &self.advertise
            && !is_host_port(advertise)
        {
            return bad("advertise", "must be host:port");
        }
        if !(MIN_HEARTBEAT_INTERVAL..=MAX_HEARTBEAT_INTERVAL).contains(&self.heartbeat_interval) {
            return Err(ConfigError {
                field: "heartbeat_interval",
                problem: format!(
                    "{:?} is outside {MIN_HEARTBEAT_INTERVAL:?}..={MAX_HEARTBEAT_INTERVAL:?}",
                    self.heartbeat_interval
                ),
            });
        }
        if !(1..=MAX_INVENTORY_LOG_CAPACITY).contains(&self.inventory_log_capacity) {
            return Err(ConfigError {
                field: "inventory_log_capacity",
                problem: format!("must be between 1 and {MAX_INVENTORY_LOG_CAPACITY}"),
            });
        }
        if let Some(c) = self.controllers.iter().find(|c| !is_host_port(c)) {
            return Err(ConfigError {
                field: "controllers",
                problem: format!("{c:?} is not host:port"),
            });
        }
        Ok(())
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Whether `text` looks like `host:port`.
pub(crate) fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The node id stored in `data_dir`, created as `cs-<hostname>-<random hex>` on first use.
pub fn load_or_create_node_id(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_token(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(text) => {
            let message = format!("{}: {:?} is not a node id", path.display(), text.trim());
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let id = format!("cs-{}-{:08x}", hostname(), rand::random::<u32>());
    redcloud_proto::local::create_private_dir_all(data_dir)?;
    // Write then rename, so a crash never leaves a half-written id behind; then sync the
    // directory, so a power cut cannot take the name and mint a second identity.
    let temporary = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&temporary, format!("{id}\n"))?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    redcloud_proto::local::sync_dir(data_dir)?;
    Ok(id)
}

/// This host's name reduced to id-safe characters, or "host" when unknown.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if name.is_empty() {
        "host".to_owned()
    } else {
        name
    }
}

/// The address others reach this chunkserver at: the configured one, else one found from
/// the listener and the route toward its controllers (see
/// [`redcloud_proto::local::advertised_address`]).
pub fn advertised_address(
    configured: Option<&str>,
    local: SocketAddr,
    controllers: &[String],
) -> String {
    match configured {
        Some(address) => address.to_owned(),
        None => redcloud_proto::local::advertised_address(local, controllers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_given_a_secret() {
        let mut c = ChunkserverConfig::new("/tmp/x");
        assert_eq!(c.validate().unwrap_err().field, "secret");
        c.secret = Some(redcloud_proto::trust::ClusterSecret::from_bytes([1; 32]));
        c.validate().unwrap();
        c.secret = None;
        c.insecure = true;
        c.validate().unwrap();
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut base = ChunkserverConfig::new("/tmp/x");
        base.insecure = true;
        type Spoil = fn(&mut ChunkserverConfig);
        let cases: [(&str, Spoil); 9] = [
            ("data_dir", |c| c.data_dir = PathBuf::new()),
            ("zone", |c| c.zone = "eu west".into()),
            ("capacity", |c| c.capacity = Some(0)),
            ("id", |c| c.id = Some(String::new())),
            ("advertise", |c| c.advertise = Some("nohost".into())),
            ("controllers", |c| c.controllers = vec!["c1:99999".into()]),
            ("heartbeat_interval", |c| {
                c.heartbeat_interval = Duration::ZERO
            }),
            ("heartbeat_interval", |c| {
                c.heartbeat_interval = Duration::from_secs(3600);
            }),
            ("inventory_log_capacity", |c| c.inventory_log_capacity = 0),
        ];
        for (field, spoil) in cases {
            let mut config = base.clone();
            spoil(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn node_id_is_created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_node_id(dir.path()).unwrap();
        assert!(first.starts_with("cs-") && is_token(&first), "{first}");
        assert_eq!(load_or_create_node_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_node_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_garbled_node_id_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID_FILE), "two words").unwrap();
        let err = load_or_create_node_id(dir.path()).unwrap_err();
        assert!(err.to_string().contains(NODE_ID_FILE), "{err}");
    }

    #[test]
    fn advertised_address_prefers_config_then_listener() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertised_address(Some("cs1:7200"), local, &[]), "cs1:7200");
        assert_eq!(advertised_address(None, local, &[]), "127.0.0.1:4000");
    }
}
