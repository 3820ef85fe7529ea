//! In-process clusters for tests: real controllers (`redcloud_meta::node`) and chunkservers
//! (`redcloud_chunk::run`) on 127.0.0.1 in this test process, and the client library talking
//! to them. Every wait is bounded by [`LIMIT`]; every node is stopped by its test.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use redcloud::client::connect::Controllers;
use redcloud::client::{download, upload};
use redcloud::session::Session;
use redcloud_proto::controller as pb;
use redcloud_proto::controller::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const LIMIT: Duration = Duration::from_secs(60);

/// The secret of every in-process test cluster: security is on, as for users.
pub fn test_secret() -> redcloud_proto::trust::ClusterSecret {
    redcloud_proto::trust::ClusterSecret::from_bytes([42; 32])
}

/// How the test clients dial: TLS, verified against the CA derived from [`test_secret`].
pub fn transport() -> redcloud_proto::transport::Transport {
    transport_for(&test_secret())
}

/// TLS verified against the CA of a cluster with `secret`.
pub fn transport_for(
    secret: &redcloud_proto::trust::ClusterSecret,
) -> redcloud_proto::transport::Transport {
    let ca = redcloud_proto::tls::ClusterCa::from_secret(secret).unwrap();
    redcloud_proto::transport::Transport::tls(ca.cert_pem().as_bytes())
}

/// A TLS channel to the node at `addr`.
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    transport().endpoint(addr).unwrap().connect().await.unwrap()
}

/// A chunk client of the chunkserver at `addr`.
pub async fn chunk_client(addr: &str) -> redcloud_chunk::client::ChunkClient {
    redcloud_chunk::client::connect(addr, &transport())
        .await
        .unwrap()
}

/// `msg` with the node credential of the test clusters (for calls to chunkservers).
pub fn node_request<T>(msg: T) -> tonic::Request<T> {
    redcloud_proto::trust::Gate::new(Some(&test_secret())).node_request(msg)
}

/// An operator client of the controller at `addr`, with the admin credential.
pub async fn admin(addr: &str) -> redcloud::client::connect::AdminClient {
    let channel = channel(addr).await;
    redcloud_proto::controller::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        redcloud_proto::trust::Credential(redcloud_proto::trust::admin_metadata(&test_secret())),
    )
}

pub struct Chunkserver {
    pub addr: String,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Chunkserver {
    pub async fn start(controllers: &[String]) -> Chunkserver {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, controllers, None).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        controllers: &[String],
        port: Option<u16>,
    ) -> Chunkserver {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .unwrap();
        let local = listener.local_addr().unwrap();
        let mut config = redcloud_chunk::ChunkserverConfig::new(dir.path());
        config.listen = local;
        config.controllers = controllers.to_vec();
        config.heartbeat_interval = Duration::from_millis(200);
        config.scrub_rate = 0;
        config.secret = Some(test_secret());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(redcloud_chunk::run(config, listener, async {
            let _ = rx.await;
        }));
        Chunkserver {
            addr: local.to_string(),
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub struct Ctl {
    pub node: redcloud_meta::node::Controller,
    pub addr: String,
    pub p2p: String,
    pub dir: tempfile::TempDir,
}

/// A controller with a fresh data directory.
pub async fn controller(
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut redcloud_meta::node::ControllerConfig),
) -> Ctl {
    controller_in(tempfile::tempdir().unwrap(), bootstrap, tweak).await
}

/// A controller on `dir` (a restart when it holds an earlier controller's data).
pub async fn controller_in(
    dir: tempfile::TempDir,
    bootstrap: Vec<String>,
    tweak: impl FnOnce(&mut redcloud_meta::node::ControllerConfig),
) -> Ctl {
    let mut config = redcloud_meta::node::ControllerConfig {
        data_dir: dir.path().to_path_buf(),
        cluster: "it".into(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        bootstrap,
        mdns: false,
        heartbeat_timeout_ms: 1_500,
        sync_interval: Duration::from_millis(300),
        repair_interval: Duration::from_millis(200),
        secret: Some(test_secret()),
        ..Default::default()
    };
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = redcloud_meta::node::start(config, listener).await.unwrap();
    let addrs = node.net.listen_addrs().await.unwrap();
    let p2p = format!("{}/p2p/{}", addrs[0], node.parts.node_id);
    Ctl {
        addr: node.grpc_addr.to_string(),
        node,
        p2p,
        dir,
    }
}

pub async fn api(addr: &str) -> ControllerServiceClient<tonic::transport::Channel> {
    ControllerServiceClient::new(channel(addr).await)
}

/// The head version of `name` and its chunks, as the controller at `addr` resolves it for
/// `token`'s user.
pub async fn resolve(addr: &str, token: &str, name: &str) -> pb::ResolveResponse {
    let request = pb::ResolveRequest {
        name: name.into(),
        version: String::new(),
    };
    api(addr)
        .await
        .resolve(redcloud::client::authed(request, token))
        .await
        .unwrap()
        .into_inner()
}

pub async fn login(addr: &str, user: &str) -> String {
    let mut c = api(addr).await;
    let _ = c
        .register(pb::RegisterRequest {
            user: user.into(),
            password: "password-1".into(),
        })
        .await;
    c.login(pb::LoginRequest {
        user: user.into(),
        password: "password-1".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

/// The cluster-wide status of controller `addr` (asked with the admin credential).
pub async fn status(addr: &str) -> pb::StatusResponse {
    let mut request = tonic::Request::new(pb::StatusRequest {});
    *request.metadata_mut() = redcloud_proto::trust::admin_metadata(&test_secret());
    api(addr).await.status(request).await.unwrap().into_inner()
}

pub async fn wait_until<F, Fut>(what: &str, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < LIMIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// Waits until `n` chunkservers are active on controller `addr`.
pub async fn wait_active(addr: &str, n: usize) {
    wait_until("chunkservers are active", || async {
        status(addr)
            .await
            .chunkservers
            .iter()
            .filter(|c| c.state == "active")
            .count()
            == n
    })
    .await;
}

pub fn session(token: &str) -> Session {
    Session {
        user: "u".into(),
        token: token.into(),
        last_write_hlc: 0,
    }
}

pub async fn put(
    addrs: &[String],
    token: &str,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> pb::FileInfo {
    put_tagged(addrs, token, dir, name, bytes, "t").await
}

pub async fn put_tagged(
    addrs: &[String],
    token: &str,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    tag: &str,
) -> pb::FileInfo {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut ctl = Controllers::new(addrs.to_vec(), transport());
    let mut s = session(token);
    // The session file is written under REDCLOUD_HOME; keep it inside the test dir.
    upload::upload(&mut ctl, &mut s, &path, name, &[tag.to_string()])
        .await
        .unwrap()
        .file
}

pub async fn get(addrs: &[String], token: &str, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(format!("{name}.out"));
    let mut ctl = Controllers::new(addrs.to_vec(), transport());
    download::download(&mut ctl, &session(token), name, None, &out, true)
        .await
        .unwrap();
    std::fs::read(&out).unwrap()
}

pub fn set_home(dir: &Path) {
    // SAFETY of set_var: tests in this binary all point REDCLOUD_HOME at a fresh temp dir
    // before any client call; the value is only read by the session code.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("REDCLOUD_HOME", dir.join("home"));
    }
}
