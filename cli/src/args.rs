//! The command line, defined with clap's derive API. Names and flags are part of the
//! interface: scripts and tests depend on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The dev cluster's controllers: what the client reaches with no flag and no environment.
pub const DEFAULT_CONTROLLERS: &str = "127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102";

#[derive(Debug, Parser)]
#[command(
    name = "redcloud",
    version,
    about = "A distributed, tag-based file store"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where `redcloud dev` keeps its cluster secret (under its default data directory).
pub const DEV_SECRET_FILE: &str = "./redcloud-data/cluster.secret";
/// Where `redcloud dev` writes its cluster's CA certificate.
pub const DEV_CA_FILE: &str = "./redcloud-data/ca.pem";

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Controller to talk to (host:port); repeatable or comma-separated; tried in order.
    /// Default: $REDCLOUD_CONTROLLERS, then the dev cluster's three controllers.
    /// A chunkserver reports to these (and learns the rest from them).
    #[arg(long = "controller", global = true, value_delimiter = ',')]
    pub controllers: Vec<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// The cluster secret (`redcloud secret` makes one): controllers and chunkservers need
    /// it; the CLI needs it for operator commands (drain, undrain, forget-controller,
    /// set-replication). Default for the CLI: the dev cluster's, when present.
    #[arg(long, global = true, env = "REDCLOUD_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The CA certificate servers are verified with (`redcloud ca` prints it). Default: the
    /// one derived from the secret when one is given, else the dev cluster's.
    #[arg(long, global = true, env = "REDCLOUD_CA")]
    pub ca_file: Option<PathBuf>,
    /// No secret and no TLS: for a cluster started with `--insecure` (development only).
    /// Daemons then let every caller in; the CLI talks plaintext.
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account.
    Register(Credentials),
    /// Log in and keep the session token under $REDCLOUD_HOME.
    Login(Credentials),
    /// Upload files with tags (a name that exists becomes a new version). Many files go up
    /// several at once; one that fails is reported and the others are still added.
    Add {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Tag to attach; at least one.
        #[arg(short = 't', long = "tag", required = true)]
        tags: Vec<String>,
    },
    /// List files carrying all the given tags (no tag: every file).
    List { tags: Vec<String> },
    /// Download a file, verified end to end.
    Download {
        name: String,
        /// Where to write it (default: the file name in the current directory).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// A version from `history` (default: the current version).
        #[arg(long)]
        version: Option<String>,
    },
    /// Delete every file that carries all the given tags.
    Delete {
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Add tags to every file that carries all the query tags.
    AddTags {
        #[arg(required = true)]
        query: Vec<String>,
        #[arg(long = "add", required = true, num_args = 1..)]
        add: Vec<String>,
    },
    /// Remove tags from every file that carries all the query tags.
    DeleteTags {
        #[arg(required = true)]
        query: Vec<String>,
        #[arg(long = "remove", required = true, num_args = 1..)]
        remove: Vec<String>,
    },
    /// Versions of a file, oldest first.
    History { name: String },
    /// Make an earlier version current again (also undeletes).
    Restore { name: String, version: String },
    /// Files whose concurrent writes left conflicting versions.
    Conflicts,
    /// Cluster health: controllers, chunkservers, replication, repair.
    Status,
    /// Drain a chunkserver: its chunks are copied elsewhere, then it is marked removed (only
    /// once every chunk it holds is confirmed on other active servers).
    Drain {
        /// The chunkserver's id (see `status`).
        chunkserver: String,
    },
    /// Return a draining or removed chunkserver to active.
    Undrain {
        /// The chunkserver's id (see `status`).
        chunkserver: String,
    },
    /// Forget a controller that is gone for good, so garbage collection stops waiting for it.
    ForgetController {
        /// The controller's id (see `status`).
        controller: String,
    },
    /// Change the cluster's replication policy: `all` or a number of copies.
    SetReplication { policy: String },
    /// Print the cluster's CA certificate (derived from the secret): what clients without the
    /// secret verify servers with (`--ca-file`, `$REDCLOUD_CA`).
    Ca,
    /// Log out: the controller revokes this session's token, and it is deleted here.
    Logout,
    /// Print a new random cluster secret (or write it to a new file only you can read).
    Secret {
        /// Write it here (created with mode 0600; never overwrites) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Interactive shell with the same commands.
    Shell,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Run a local cluster on loopback (controllers on 7100.., chunkservers on 7200..).
    Dev(DevArgs),
    /// Run a controller: metadata, the client API, placement, repair and GC.
    Controller(ControllerArgs),
    /// Run a chunkserver: stores content-addressed chunks in RocksDB and serves them over gRPC.
    Chunkserver(ChunkserverArgs),
}

impl Global {
    /// The cluster secret from `--secret-file`/`$REDCLOUD_SECRET_FILE`, if given.
    pub fn secret(&self) -> anyhow::Result<Option<redcloud_proto::trust::ClusterSecret>> {
        self.secret_file
            .as_deref()
            .map(redcloud_proto::trust::ClusterSecret::load)
            .transpose()
            .map_err(anyhow::Error::from)
    }

    /// The secret for operator commands: the given one, else the dev cluster's if present.
    pub fn admin_secret(&self) -> Option<redcloud_proto::trust::ClusterSecret> {
        let path = self
            .secret_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEV_SECRET_FILE));
        redcloud_proto::trust::ClusterSecret::load(&path).ok()
    }

    /// The operator's TLS files, as the node libraries take them.
    pub fn tls_files(&self, tls: &TlsArgs) -> redcloud_proto::tls::TlsFiles {
        redcloud_proto::tls::TlsFiles {
            ca: self.ca_file.clone(),
            cert: tls.tls_cert.clone(),
            key: tls.tls_key.clone(),
        }
    }

    /// How a client dials the cluster: TLS verified with `--ca-file`, else with the CA
    /// derived from `--secret-file`, else with the dev cluster's CA; plaintext only with
    /// `--insecure`. Never falls back to plaintext by itself.
    pub fn client_transport(&self) -> anyhow::Result<redcloud_proto::transport::Transport> {
        use redcloud_proto::transport::Transport;
        if let Some(ca) = &self.ca_file {
            let pem = redcloud_proto::tls::read_pem(ca, false)?;
            return Ok(Transport::tls(pem.as_bytes()));
        }
        if let Some(secret) = self.secret()? {
            let ca = redcloud_proto::tls::ClusterCa::from_secret(&secret)?;
            return Ok(Transport::tls(ca.cert_pem().as_bytes()));
        }
        let dev = std::path::Path::new(DEV_CA_FILE);
        if dev.exists() {
            let pem = redcloud_proto::tls::read_pem(dev, false)?;
            return Ok(Transport::tls(pem.as_bytes()));
        }
        if self.insecure {
            return Ok(Transport::plaintext());
        }
        anyhow::bail!(
            "no CA certificate to verify the cluster with: pass --ca-file FILE or set \
             $REDCLOUD_CA (`redcloud ca` on a node with the secret prints it), or use \
             --insecure for a cluster started with --insecure"
        )
    }

    /// The controllers a client tries: flags, then `$REDCLOUD_CONTROLLERS`, then the dev
    /// cluster's defaults.
    pub fn client_controllers(&self) -> Vec<String> {
        if !self.controllers.is_empty() {
            return self.controllers.clone();
        }
        let from_env = std::env::var("REDCLOUD_CONTROLLERS").unwrap_or_default();
        let list = if from_env.trim().is_empty() {
            DEFAULT_CONTROLLERS.to_string()
        } else {
            from_env
        };
        split_list(&list)
    }
}

/// Splits a comma-separated list, dropping blanks.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Command {
    /// Whether this command is a long-running daemon (it logs at info by default).
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Controller(_) | Command::Chunkserver(_) | Command::Dev(_)
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct Credentials {
    pub user: String,
    /// Read the password from standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Directory holding every node's data; reused on the next start.
    #[arg(long, default_value = "./redcloud-data")]
    pub data: PathBuf,
    /// Number of controllers.
    #[arg(long = "controllers", id = "dev_controllers", default_value_t = 3)]
    pub controllers: u16,
    /// Number of chunkservers.
    #[arg(long, default_value_t = 3)]
    pub chunkservers: u16,
    /// First controller gRPC port; chunkservers start at base + 100, controller p2p at
    /// base + 200, metrics at base + 300.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct ChunkserverArgs {
    /// Directory for the chunk store (created if missing).
    #[arg(long, default_value = "./redcloud-data/chunkserver")]
    pub data: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:7200")]
    pub listen: String,
    /// Address (host:port) that clients and other chunkservers use to reach this one;
    /// defaults to the listen address, with an unspecified IP replaced by this host's address.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Failure domain label used to spread replicas.
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// Capacity in bytes offered to the cluster (default: free space of the data directory).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// Scrub rate in bytes per second (0 disables the scrubber).
    #[arg(long, default_value_t = 32 << 20)]
    pub scrub_rate: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Certificates an operator brings; without them a node issues itself one from the CA
/// derived from the cluster secret.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// This node's certificate chain (PEM), issued for the name `redcloud`; needs --tls-key
    /// and --ca-file.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 0600).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Directory for the controller's metadata store and node key (created if missing).
    #[arg(long, default_value = "./redcloud-data/controller")]
    pub data: PathBuf,
    /// Cluster name: scopes gossip topics and protocols, so clusters on one LAN never mix.
    #[arg(long, default_value = "redcloud")]
    pub cluster: String,
    /// gRPC listen address (clients and chunkservers).
    #[arg(long, default_value = "0.0.0.0:7100")]
    pub listen: String,
    /// libp2p listen address for controller-to-controller replication.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/7300")]
    pub p2p_listen: String,
    /// Peer to contact at start: a multiaddr, host:port, or a DNS name resolving to many
    /// controllers; repeatable. Default: the DNS alias `controller` when it resolves.
    #[arg(long, value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Turn off mDNS discovery.
    #[arg(long)]
    pub no_mdns: bool,
    /// Where to serve Prometheus metrics (`/metrics`); empty disables.
    #[arg(long, default_value = "0.0.0.0:7400")]
    pub metrics_listen: String,
    /// gRPC address (host:port) other nodes use to reach this controller; default: the listen
    /// address, with an unspecified IP replaced by this host's address.
    #[arg(long)]
    pub advertise: Option<String>,
    /// A chunkserver silent for this long is marked failed (milliseconds).
    #[arg(long, default_value_t = 6_000)]
    pub heartbeat_timeout_ms: u64,
    /// Copies an upload writes synchronously (capped by the live chunkservers).
    #[arg(long, default_value_t = 2)]
    pub write_quorum: u32,
    /// Replication policy of a new cluster: `all` (the default) or a number of copies. An
    /// existing cluster keeps its policy; change it with `redcloud set-replication`.
    #[arg(long)]
    pub replication: Option<String>,
    /// Number of file documents of a new cluster (default 16). Fixed when the cluster is
    /// created: a controller joining a cluster must use the cluster's count.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Trash retention of a new cluster, in milliseconds (default 7 days).
    #[arg(long)]
    pub trash_retention_ms: Option<u64>,
    /// Orphan chunks are deleted after this long unreferenced (milliseconds).
    #[arg(long, default_value_t = 3_600_000)]
    pub gc_grace_ms: u64,
    /// How long a session token is valid (milliseconds; at most 30 days).
    #[arg(long, default_value_t = 86_400_000)]
    pub token_ttl_ms: u64,
    /// Largest tolerated clock skew against peers and chunkservers (milliseconds); a
    /// controller further off corrects its clock to the majority, or, when nobody can tell
    /// who is right, takes no time-based destructive action.
    #[arg(long, default_value_t = 30_000)]
    pub max_clock_skew_ms: u64,
    /// Test only: shift this controller's wall clock by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_offset_ms: i64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        // Catches clashing argument ids (a global flag and a subcommand flag of one name).
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_parses_its_documented_form() {
        for argv in [
            "redcloud add a.txt --tag x -t y",
            "redcloud list",
            "redcloud --json list a b",
            "redcloud download f -o out --force",
            "redcloud add-tags a --add b c",
            "redcloud delete-tags a --remove b",
            "redcloud dev --controllers 1 --chunkservers 2 --base-port 9000",
            "redcloud --controller h:1,h:2 status",
            "redcloud chunkserver --controller h:1 --listen 127.0.0.1:0",
            "redcloud controller --bootstrap a:7300 --no-mdns",
        ] {
            let words = argv.split_whitespace();
            assert!(Cli::try_parse_from(words).is_ok(), "{argv}");
        }
        let cli = Cli::try_parse_from(["redcloud", "--controller", "a:1,b:2", "list"]).unwrap();
        assert_eq!(cli.global.client_controllers(), ["a:1", "b:2"]);
        assert!(
            Cli::try_parse_from(["redcloud", "add", "f"]).is_err(),
            "a tag is required"
        );
    }
}
