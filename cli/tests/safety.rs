//! Regression tests for the ways acknowledged data used to be lost, each on an in-process
//! cluster of real controllers and chunkservers on 127.0.0.1: a drain that retired the last
//! copy, a controller with an empty view deleting the cluster's chunks, a fast clock emptying
//! the trash, commits below the write quorum, uploads outliving the GC grace, departed
//! controllers blocking GC forever, cluster settings rewritten at start-up, and files without
//! tags. Each test failed on the code before its fix.

mod common;
mod inproc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use redcloud::client::authed;
use redcloud::client::connect::Controllers;
use redcloud::client::upload::{UploadOptions, upload_with};
use redcloud_proto::controller as pb;
use tonic::Code;

use common::bytes as data;
use inproc::*;

const DAY_MS: u64 = 24 * 3600 * 1000;

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Stops a chunkserver and starts it again on the same data directory and port.
async fn restart(cs: Chunkserver, controllers: &[String]) -> Chunkserver {
    let mut cs = cs;
    cs.stop().await;
    let port = port_of(&cs.addr);
    let Chunkserver { dir, .. } = cs;
    Chunkserver::start_in(dir, controllers, Some(port)).await
}

fn state_of(s: &pb::StatusResponse, id: &str) -> String {
    s.chunkservers
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.state.clone())
        .unwrap_or_default()
}

/// Holds for `window`, checking `ok` every 100 ms; panics the first time it is false.
async fn holds_for<F, Fut>(what: &str, window: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(
            ok().await,
            "{what} stopped holding after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn present(addr: &str, ids: &[Bytes]) -> Vec<bool> {
    let mut c = chunk_client(addr).await;
    c.has_chunks(node_request(redcloud_proto::chunk::HasChunksRequest {
        ids: ids.to_vec(),
        touch: false,
    }))
    .await
    .unwrap()
    .into_inner()
    .present
}

async fn chunk_ids(addr: &str, token: &str, name: &str) -> Vec<Bytes> {
    resolve(addr, token, name)
        .await
        .chunks
        .into_iter()
        .map(|c| c.id)
        .collect()
}

async fn history(addr: &str, token: &str, name: &str) -> Vec<pb::VersionInfo> {
    api(addr)
        .await
        .history(authed(pb::HistoryRequest { name: name.into() }, token))
        .await
        .map(|r| r.into_inner().versions)
        .unwrap_or_default()
}

/// Issue 11, item 1: one controller, chunkservers A, B, C; B and C die; a file lands on A
/// only; `drain A` must not retire A while it holds the only copy. Once B and C return, the
/// drain completes, and the file downloads with A gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_never_retires_the_last_copy() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| {
        cfg.replication = Some("2".into());
        cfg.write_quorum = 2;
    })
    .await;
    let addrs = vec![c.addr.clone()];
    let mut a = Chunkserver::start(&addrs).await;
    let mut b = Chunkserver::start(&addrs).await;
    let mut cc = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 3).await;
    b.stop().await;
    cc.stop().await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "ada").await;
    let bytes = data(3 << 20, 11);
    put(&addrs, &token, work.path(), "only-on-a", &bytes).await;

    let a_id = status(&c.addr)
        .await
        .chunkservers
        .iter()
        .find(|s| s.address == a.addr)
        .unwrap()
        .id
        .clone();
    admin(&c.addr)
        .await
        .drain(pb::DrainRequest {
            chunkserver_id: a_id.clone(),
        })
        .await
        .unwrap();
    wait_until("A is draining", || async {
        state_of(&status(&c.addr).await, &a_id) == "draining"
    })
    .await;
    // Many repair passes: A holds the only copy and no other server is active.
    holds_for("A stays draining", Duration::from_secs(3), || async {
        state_of(&status(&c.addr).await, &a_id) == "draining"
    })
    .await;

    let b = restart(b, &addrs).await;
    let cc = restart(cc, &addrs).await;
    wait_until("the drain completes once copies exist", || async {
        state_of(&status(&c.addr).await, &a_id) == "removed"
    })
    .await;
    let ids = chunk_ids(&c.addr, &token, "only-on-a").await;
    a.stop().await;
    let on_b = present(&b.addr, &ids).await;
    let on_c = present(&cc.addr, &ids).await;
    assert!(
        on_b.iter().zip(&on_c).all(|(b, c)| *b && *c),
        "every chunk has its two copies on B and C before A is removed"
    );
    assert_eq!(get(&addrs, &token, work.path(), "only-on-a").await, bytes);
    for mut s in [b, cc] {
        s.stop().await;
    }
    c.node.stop().await;
}

/// `undrain` returns a draining server to active, and unknown ids are NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undrain_returns_a_server_to_active() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut a = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let id = status(&c.addr).await.chunkservers[0].id.clone();
    let mut adm = admin(&c.addr).await;
    adm.drain(pb::DrainRequest {
        chunkserver_id: id.clone(),
    })
    .await
    .unwrap();
    // With nothing to move, it may be removed at once; either way it is no longer active.
    wait_until("the server leaves active", || async {
        state_of(&status(&c.addr).await, &id) != "active"
    })
    .await;
    adm.undrain(pb::UndrainRequest {
        chunkserver_id: id.clone(),
    })
    .await
    .unwrap();
    wait_until("the server is active again", || async {
        state_of(&status(&c.addr).await, &id) == "active"
    })
    .await;
    let err = adm
        .undrain(pb::UndrainRequest {
            chunkserver_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::NotFound | Code::InvalidArgument),
        "{err}"
    );
    a.stop().await;
    c.node.stop().await;
}

/// Issue 11, item 2: a second controller with an empty store, never peered with anyone, to
/// which the cluster's chunkserver reports, sees every chunk as an orphan. It must delete
/// none of them, however short its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_with_an_empty_view_deletes_nothing() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "bea").await;
    let bytes = data(2 << 20, 12);
    put(&addrs, &token, work.path(), "precious", &bytes).await;
    let ids = chunk_ids(&c.addr, &token, "precious").await;

    let stranger = controller(Vec::new(), |cfg| {
        cfg.gc_grace_ms = 100;
        cfg.gc_interval = Duration::from_millis(100);
    })
    .await;
    // The chunkserver now reports to both; the stranger knows no file at all.
    let both = vec![c.addr.clone(), stranger.addr.clone()];
    let cs = restart(cs, &both).await;
    wait_active(&stranger.addr, 1).await;
    holds_for(
        "every chunk stays on the server",
        Duration::from_secs(4),
        || async { present(&cs.addr, &ids).await.iter().all(|p| *p) },
    )
    .await;
    let gc = status(&stranger.addr).await.gc.unwrap();
    assert!(!gc.allowed, "the stranger may not delete: {gc:?}");
    assert!(!gc.blocked_by.is_empty());
    assert_eq!(get(&addrs, &token, work.path(), "precious").await, bytes);
    let mut cs = cs;
    cs.stop().await;
    stranger.node.stop().await;
    c.node.stop().await;
}

/// Issue 11, item 3: a commit naming chunks no chunkserver holds commits nothing and names
/// them; a commit whose chunks are confirmed succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_below_the_write_quorum_commits_nothing() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "cy").await;
    let ghost = [9u8; 32];
    let resp = api(&c.addr)
        .await
        .commit_file(authed(
            pb::CommitFileRequest {
                name: "ghost".into(),
                tags: vec!["t".into()],
                size: 10,
                blake3: Bytes::copy_from_slice(&[1; 32]),
                chunks: vec![pb::ChunkRef {
                    id: Bytes::copy_from_slice(&ghost),
                    size: 10,
                }],
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.file.is_none(), "nothing committed");
    assert_eq!(resp.missing, vec![Bytes::copy_from_slice(&ghost)]);
    let listed = api(&c.addr)
        .await
        .list(authed(pb::ListRequest { tags: vec![] }, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.files.is_empty(), "{listed:?}");
    // A real upload with one server active is a full-quorum write (min(quorum, active)).
    let bytes = data(1 << 20, 13);
    put(&addrs, &token, work.path(), "real", &bytes).await;
    assert_eq!(get(&addrs, &token, work.path(), "real").await, bytes);
    cs.stop().await;
    c.node.stop().await;
}

/// Issue 11, item 9: an upload that takes many GC grace periods still commits, and every
/// byte downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_longer_than_the_gc_grace_commits() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| {
        cfg.gc_grace_ms = 300;
        cfg.gc_interval = Duration::from_millis(100);
    })
    .await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "dee").await;
    let bytes = data(12 << 20, 14);
    let path = work.path().join("slow");
    std::fs::write(&path, &bytes).unwrap();
    let mut ctl = Controllers::new(addrs.clone(), transport());
    let mut s = session(&token);
    let started = Instant::now();
    let options = UploadOptions {
        // One chunk write starting every 200 ms: about a dozen chunks over more than 2 s,
        // each grace period (300 ms) seeing some written and the rest still to come.
        pace: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    upload_with(&mut ctl, &mut s, &path, "slow", &["t".into()], &options)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(1_500),
        "the upload outlasted the grace many times ({took:?})"
    );
    assert_eq!(get(&addrs, &token, work.path(), "slow").await, bytes);
    cs.stop().await;
    c.node.stop().await;
}

/// Issue 11, item 6: a controller eight days fast, which learns of a deletion, must not
/// purge the trash (retention one day) for everyone; and a write through the healthy
/// controller after one through the fast controller wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_controller_purges_nothing_and_does_not_win_later_writes() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let a = controller(Vec::new(), |cfg| {
        cfg.trash_retention_ms = Some(DAY_MS);
        cfg.gc_interval = Duration::from_millis(100);
    })
    .await;
    let fast = controller(vec![a.p2p.clone()], |cfg| {
        cfg.clock_offset_ms = 8 * DAY_MS as i64;
        cfg.gc_interval = Duration::from_millis(100);
    })
    .await;
    let addrs = vec![a.addr.clone(), fast.addr.clone()];
    let mut s1 = Chunkserver::start(&addrs).await;
    let mut s2 = Chunkserver::start(&addrs).await;
    wait_active(&a.addr, 2).await;
    wait_active(&fast.addr, 2).await;
    let token = login(&a.addr, "eve").await;
    let bytes = data(1 << 20, 15);
    put(
        std::slice::from_ref(&a.addr),
        &token,
        work.path(),
        "trash",
        &bytes,
    )
    .await;
    let deleted = api(&a.addr)
        .await
        .delete(authed(
            pb::DeleteRequest {
                tags: vec!["t".into()],
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.names, ["trash"]);
    wait_until("the fast controller sees the deletion", || async {
        history(&fast.addr, &token, "trash")
            .await
            .iter()
            .any(|v| v.deleted)
    })
    .await;
    holds_for(
        "the trash keeps the version everywhere",
        Duration::from_secs(3),
        || async {
            history(&a.addr, &token, "trash").await.len() >= 2
                && history(&fast.addr, &token, "trash").await.len() >= 2
        },
    )
    .await;
    let clock = status(&fast.addr).await.clock.unwrap();
    assert!(
        clock.state == "corrected" || clock.state == "skewed",
        "the fast controller knows its clock is off: {clock:?}"
    );
    // Restore through the healthy controller works.
    let old = history(&a.addr, &token, "trash")
        .await
        .into_iter()
        .find(|v| !v.deleted)
        .unwrap();
    api(&a.addr)
        .await
        .restore(authed(
            pb::RestoreRequest {
                name: "trash".into(),
                version: old.version,
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap();

    // One write through the fast controller, then one through the healthy one: the later
    // write is the head on both.
    let v_fast = data(300_000, 16);
    put(
        std::slice::from_ref(&fast.addr),
        &token,
        work.path(),
        "race",
        &v_fast,
    )
    .await;
    wait_until("the healthy controller has the fast write", || async {
        !history(&a.addr, &token, "race").await.is_empty()
    })
    .await;
    let v_later = data(300_000, 17);
    put(
        std::slice::from_ref(&a.addr),
        &token,
        work.path(),
        "race",
        &v_later,
    )
    .await;
    let want = blake3::hash(&v_later);
    for addr in [&a.addr, &fast.addr] {
        wait_until("the later write is the head everywhere", || async {
            history(addr, &token, "race")
                .await
                .iter()
                .any(|v| v.head && v.blake3[..] == want.as_bytes()[..])
        })
        .await;
    }
    s1.stop().await;
    s2.stop().await;
    fast.node.stop().await;
    a.node.stop().await;
}

/// Issue 11, item 7: a controller that is gone blocks orphan deletion (GC cannot prove it is
/// in sync with it) until an operator forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forgetting_a_departed_controller_unblocks_gc() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let a = controller(Vec::new(), |cfg| {
        cfg.gc_interval = Duration::from_millis(100);
    })
    .await;
    let b = controller(vec![a.p2p.clone()], |_| {}).await;
    let mut cs = Chunkserver::start(std::slice::from_ref(&a.addr)).await;
    let b_id = b.node.parts.node_id.clone();
    wait_until("a sees b connected", || async {
        status(&a.addr)
            .await
            .controllers
            .iter()
            .any(|c| c.connected && c.id == b_id)
    })
    .await;
    wait_until("gc is allowed with both in sync", || async {
        status(&a.addr).await.gc.is_some_and(|g| g.allowed)
    })
    .await;
    b.node.stop().await;
    wait_until("gc blocks on the departed controller", || async {
        status(&a.addr).await.gc.is_some_and(|g| !g.allowed)
    })
    .await;
    let err = admin(&a.addr)
        .await
        .forget_controller(pb::ForgetControllerRequest {
            controller_id: "no-such-controller".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::NotFound | Code::InvalidArgument),
        "{err}"
    );
    admin(&a.addr)
        .await
        .forget_controller(pb::ForgetControllerRequest {
            controller_id: b_id,
        })
        .await
        .unwrap();
    wait_until("gc is allowed again", || async {
        status(&a.addr).await.gc.is_some_and(|g| g.allowed)
    })
    .await;
    cs.stop().await;
    a.node.stop().await;
}

/// Issue 11, item 8: the shard count is fixed at creation; `--replication` seeds only a new
/// cluster; `set-replication` changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_settings_survive_restarts_with_other_flags() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| {
        cfg.shards = Some(4);
        cfg.replication = Some("2".into());
    })
    .await;
    let s = status(&c.addr).await;
    assert_eq!((s.shards, s.replication.as_str()), (4, "2"));
    let Ctl { node, dir, .. } = c;
    node.stop().await;

    // Another shard count on the same data refuses to start, and says why.
    let path = dir.path().to_path_buf();
    let config = redcloud_meta::node::ControllerConfig {
        data_dir: path.clone(),
        cluster: "it".into(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        mdns: false,
        shards: Some(8),
        secret: Some(test_secret()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = redcloud_meta::node::start(config, listener)
        .await
        .expect_err("a different shard count must refuse");
    assert!(format!("{err:#}").contains("shards"), "{err:#}");

    // Another replication flag does not rewrite the cluster's policy.
    let c = controller_in(dir, Vec::new(), |cfg| {
        cfg.replication = Some("3".into());
    })
    .await;
    let s = status(&c.addr).await;
    assert_eq!((s.shards, s.replication.as_str()), (4, "2"));
    admin(&c.addr)
        .await
        .set_replication(pb::SetReplicationRequest {
            policy: "all".into(),
        })
        .await
        .unwrap();
    assert_eq!(status(&c.addr).await.replication, "all");
    let err = admin(&c.addr)
        .await
        .set_replication(pb::SetReplicationRequest {
            policy: "zero".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.node.stop().await;
}

/// Issue 11, item 10: the controller, not only the CLI, refuses a file with no tags, and
/// never removes a file's last tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_keeps_at_least_one_tag() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "fay").await;
    let bytes = data(100_000, 18);
    let info = put(&addrs, &token, work.path(), "tagged", &bytes).await;
    let err = api(&c.addr)
        .await
        .commit_file(authed(
            pb::CommitFileRequest {
                name: "untagged".into(),
                tags: vec![],
                size: info.size,
                blake3: info.blake3.clone(),
                chunks: chunk_ids(&c.addr, &token, "tagged")
                    .await
                    .into_iter()
                    .map(|id| pb::ChunkRef {
                        id,
                        size: info.size,
                    })
                    .collect(),
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = api(&c.addr)
        .await
        .delete_tags(authed(
            pb::TagsRequest {
                query: vec!["t".into()],
                tags: vec!["t".into()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::FailedPrecondition | Code::InvalidArgument),
        "{err}"
    );
    let listed = api(&c.addr)
        .await
        .list(authed(
            pb::ListRequest {
                tags: vec!["t".into()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.files.len(), 1, "the file still carries its tag");
    cs.stop().await;
    c.node.stop().await;
}
