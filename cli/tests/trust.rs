//! The controller's trust boundary, on in-process clusters: an outsider controller with
//! another secret learns nothing, internal and operator calls need their credentials, a
//! controller without a secret refuses to start, and dedup answers never reveal another
//! user's chunks.

mod common;
mod inproc;

use std::time::Duration;

use bytes::Bytes;
use redcloud::client::authed;
use redcloud_proto::controller as pb;
use redcloud_proto::controller::admin_service_client::AdminServiceClient;
use redcloud_proto::controller::registry_service_client::RegistryServiceClient;
use tonic::Code;

use common::bytes as data;
use inproc::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outsider_controller_with_another_secret_learns_nothing() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let a = controller(Vec::new(), |_| {}).await;
    let _alice = login(&a.addr, "alice").await;
    let other = redcloud_proto::trust::ClusterSecret::from_bytes([99; 32]);
    let outsider = controller(vec![a.p2p.clone()], |cfg| {
        cfg.secret = Some(other.clone());
    })
    .await;
    // Its own clients: its CA, its admin credential.
    let channel = transport_for(&other)
        .endpoint(&outsider.addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut outsider_api = pb::controller_service_client::ControllerServiceClient::new(channel);
    // Several sync intervals and redials: the private network never lets it connect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut request = tonic::Request::new(pb::StatusRequest {});
    *request.metadata_mut() = redcloud_proto::trust::admin_metadata(&other);
    let s = outsider_api.status(request).await.unwrap().into_inner();
    assert!(
        s.controller.as_ref().unwrap().peers.is_empty(),
        "the outsider connected: {:?}",
        s.controller
    );
    let err = outsider_api
        .login(pb::LoginRequest {
            user: "alice".into(),
            password: "password-1".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::NotFound),
        "the outsider knows alice: {err}"
    );
    // And a peer with the right secret does connect (the control).
    let b = controller(vec![a.p2p.clone()], |_| {}).await;
    wait_until("b connects to a", || async {
        !status(&b.addr).await.controller.unwrap().peers.is_empty()
    })
    .await;
    for c in [outsider, b, a] {
        c.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_and_operator_calls_need_their_credentials() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let mut registry = RegistryServiceClient::new(channel(&c.addr).await);
    let fake = pb::HeartbeatRequest {
        id: "cs-fake".into(),
        address: "127.0.0.1:1".into(),
        inventory_digest: Bytes::from(vec![0; 32]),
        ..Default::default()
    };
    let err = registry.heartbeat(fake.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        status(&c.addr).await.chunkservers.is_empty(),
        "no fake server registered"
    );

    let mut anonymous = AdminServiceClient::new(channel(&c.addr).await);
    let err = anonymous
        .set_replication(pb::SetReplicationRequest { policy: "1".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = anonymous
        .drain(pb::DrainRequest {
            chunkserver_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A user's token is not an operator's credential either.
    let token = login(&c.addr, "mallory").await;
    let err = anonymous
        .forget_controller(authed(
            pb::ForgetControllerRequest {
                controller_id: "x".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(status(&c.addr).await.replication, "all");
    // With the admin credential it works.
    admin(&c.addr)
        .await
        .set_replication(pb::SetReplicationRequest { policy: "1".into() })
        .await
        .unwrap();
    assert_eq!(status(&c.addr).await.replication, "1");
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = redcloud_meta::node::ControllerConfig {
        data_dir: dir.path().to_path_buf(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        mdns: false,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = redcloud_meta::node::start(config, listener)
        .await
        .expect_err("no secret, no start");
    let text = format!("{err:#}");
    assert!(
        text.contains("redcloud secret") && text.contains("--insecure"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_never_tells_a_user_about_another_users_chunks() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| cfg.write_quorum = 1).await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let alice = login(&c.addr, "alice").await;
    let bob = login(&c.addr, "bob").await;
    let secret_doc = data(600_000, 77);
    put(&addrs, &alice, work.path(), "a", &secret_doc).await;
    let ids: Vec<Bytes> = api(&c.addr)
        .await
        .resolve(authed(
            pb::ResolveRequest {
                name: "a".into(),
                version: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .chunks
        .into_iter()
        .map(|l| {
            assert!(!l.grant.is_empty(), "reads come with grants");
            l.id
        })
        .collect();
    let plan = |token: String| {
        let ids = ids.clone();
        let addr = c.addr.clone();
        async move {
            api(&addr)
                .await
                .plan_upload(authed(
                    pb::PlanUploadRequest {
                        chunks: ids
                            .iter()
                            .map(|id| pb::ChunkRef {
                                id: id.clone(),
                                size: 1,
                            })
                            .collect(),
                        force: false,
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Alice may skip her own chunks; Bob is told to upload them (with a write grant), which
    // says nothing about whether anyone stores them.
    assert!(plan(alice.clone()).await.chunks.iter().all(|p| p.exists));
    let for_bob = plan(bob.clone()).await;
    assert!(
        for_bob
            .chunks
            .iter()
            .all(|p| !p.exists && !p.grant.is_empty())
    );
    // Bob's upload of the same bytes works and reads back.
    put(&addrs, &bob, work.path(), "b", &secret_doc).await;
    assert_eq!(get(&addrs, &bob, work.path(), "b").await, secret_doc);
    cs.stop().await;
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_passwords_is_slowed_and_weak_passwords_are_refused() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let mut cl = api(&c.addr).await;
    let err = cl
        .register(pb::RegisterRequest {
            user: "shorty".into(),
            password: "1234".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at least"), "{}", err.message());
    let _ = login(&c.addr, "victim").await;
    let guess = |password: &str| pb::LoginRequest {
        user: "victim".into(),
        password: password.into(),
    };
    let mut codes = Vec::new();
    for i in 0..8 {
        let err = cl.login(guess(&format!("guess-{i}"))).await.unwrap_err();
        codes.push(err.code());
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Code::Unauthenticated)
            .count(),
        redcloud_meta::service::logins::FREE_USER_FAILURES as usize + 1,
        "{codes:?}"
    );
    assert_eq!(codes.last(), Some(&Code::ResourceExhausted), "{codes:?}");
    // While blocked, even the right password waits.
    let err = cl.login(guess("password-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Once the block ends (1 s after the first failure past the free ones) it works.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    cl.login(guess("password-1")).await.unwrap();
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_with_an_eight_mib_id_is_refused_and_registers_nothing() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let mut registry = RegistryServiceClient::new(channel(&c.addr).await);
    let huge = pb::HeartbeatRequest {
        id: "x".repeat(8 << 20),
        address: "127.0.0.1:1".into(),
        inventory_digest: Bytes::from(vec![0; 32]),
        ..Default::default()
    };
    // Even with the node credential, the id is checked before anything is built from it.
    let started = std::time::Instant::now();
    let err = registry.heartbeat(node_request(huge)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("id"), "{}", err.message());
    eprintln!("8 MiB heartbeat refused in {:?}", started.elapsed());
    assert!(status(&c.addr).await.chunkservers.is_empty());
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_revokes_the_token_on_every_controller() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let a = controller(Vec::new(), |_| {}).await;
    let b = controller(vec![a.p2p.clone()], |_| {}).await;
    let token = login(&a.addr, "alice").await;
    let list = |addr: String, token: String| async move {
        api(&addr)
            .await
            .list(authed(pb::ListRequest { tags: vec![] }, &token))
            .await
    };
    // The token works on both controllers (the account reached b by replication).
    wait_until("alice's token works on b", || {
        let (addr, token) = (b.addr.clone(), token.clone());
        async move { list(addr, token).await.is_ok() }
    })
    .await;

    api(&a.addr)
        .await
        .logout(authed(pb::LogoutRequest {}, &token))
        .await
        .unwrap();
    let err = list(a.addr.clone(), token.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("logged out"), "{err}");
    // The revocation replicates: b refuses the token too.
    wait_until("b refuses the revoked token", || {
        let (addr, token) = (b.addr.clone(), token.clone());
        async move {
            matches!(list(addr, token).await, Err(e) if e.code() == Code::Unauthenticated)
        }
    })
    .await;
    // Logging out twice is refused (the token is already dead); a new login works.
    let again = api(&a.addr)
        .await
        .logout(authed(pb::LogoutRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    let fresh = login(&b.addr, "alice").await;
    assert_ne!(fresh, token);
    list(b.addr.clone(), fresh).await.unwrap();
    b.node.stop().await;
    a.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_a_user_only_their_own_counts() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| cfg.write_quorum = 1).await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let alice = login(&c.addr, "alice").await;
    let bob = login(&c.addr, "bob").await;
    put(&addrs, &alice, work.path(), "a1", &data(10_000, 1)).await;
    put(&addrs, &alice, work.path(), "a2", &data(10_000, 2)).await;
    put(&addrs, &bob, work.path(), "b1", &data(10_000, 3)).await;

    let mine = api(&c.addr)
        .await
        .status(authed(pb::StatusRequest {}, &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((mine.scope.as_str(), mine.files), ("user", 2));
    assert!(
        mine.chunkservers.is_empty() && mine.controllers.is_empty() && mine.controller.is_none(),
        "a user sees nothing of the cluster: {mine:?}"
    );
    let anonymous = api(&c.addr)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let cluster = status(&c.addr).await;
    assert_eq!((cluster.scope.as_str(), cluster.files), ("cluster", 3));
    assert_eq!(cluster.chunkservers.len(), 1);
    assert!(!cluster.insecure);
    cs.stop().await;
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_speaks_only_tls_verified_by_the_cluster_ca() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let register = pb::RegisterRequest {
        user: "carol".into(),
        password: "password-1".into(),
    };
    // Plaintext: no call completes.
    let plain = redcloud_proto::transport::Transport::plaintext();
    let answer = tokio::time::timeout(LIMIT, async {
        let channel = plain.endpoint(&c.addr)?.connect().await?;
        let mut cl = pb::controller_service_client::ControllerServiceClient::new(channel);
        cl.register(register.clone())
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .expect("a plaintext client gets an answer, not a hang");
    assert!(answer.is_err(), "a plaintext client registered");
    // TLS trusting another cluster's CA: the controller's certificate does not verify.
    let other = redcloud_proto::tls::ClusterCa::from_secret(
        &redcloud_proto::trust::ClusterSecret::from_bytes([7; 32]),
    )
    .unwrap();
    let wrong = redcloud_proto::transport::Transport::tls(other.cert_pem().as_bytes());
    let answer = tokio::time::timeout(LIMIT, async {
        let channel = wrong.endpoint(&c.addr)?.connect().await?;
        let mut cl = pb::controller_service_client::ControllerServiceClient::new(channel);
        cl.register(register.clone())
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .expect("an untrusting client gets an answer, not a hang");
    assert!(answer.is_err(), "a client trusting another CA registered");
    // Nothing reached the controller: carol does not exist, and registers now over TLS.
    api(&c.addr).await.register(register).await.unwrap();
    c.node.stop().await;
}
