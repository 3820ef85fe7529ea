//! In-process clusters of real controllers on 127.0.0.1: replication over libp2p (gossip and
//! anti-entropy), late joiners, partitions made with the block list, oversized changes and a
//! peer that sends garbage. Every wait is bounded and reports what it saw when it fails.

use std::time::{Duration, Instant};

use redcloud_meta::files::NewVersion;
use redcloud_meta::node::{self, Controller, ControllerConfig};
use redcloud_meta::replication::wire::{self, DocChanges, Gossip};
use tempfile::TempDir;
use tokio::net::TcpListener;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    ctl: Controller,
    p2p: String,
    _dir: TempDir,
}

fn test_secret() -> redcloud_proto::trust::ClusterSecret {
    redcloud_proto::trust::ClusterSecret::from_bytes([9; 32])
}

async fn start(bootstrap: Vec<String>) -> Node {
    start_with(bootstrap, Duration::from_millis(300)).await
}

/// A controller whose anti-entropy runs every `sync_interval` (and when a peer connects).
async fn start_with(bootstrap: Vec<String>, sync_interval: Duration) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig {
        data_dir: dir.path().to_path_buf(),
        cluster: "test".into(),
        p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
        bootstrap,
        mdns: false,
        sync_interval,
        secret: Some(test_secret()),
        ..ControllerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl = node::start(config, listener)
        .await
        .expect("controller starts");
    let addrs = ctl.net.listen_addrs().await.expect("listen addrs");
    let p2p = format!("{}/p2p/{}", addrs[0], ctl.parts.node_id);
    Node {
        ctl,
        p2p,
        _dir: dir,
    }
}

async fn cluster(n: usize) -> Vec<Node> {
    let first = start(Vec::new()).await;
    let seed = first.p2p.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start(vec![seed.clone()]).await);
    }
    nodes
}

fn version(seed: u8, chunks: usize) -> NewVersion {
    let chunks: Vec<([u8; 32], u64)> = (0..chunks)
        .map(|i| {
            let mut h = [seed; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (h, 1)
        })
        .collect();
    NewVersion {
        size: chunks.len() as u64,
        blake3: [seed; 32],
        chunks,
        tags: vec!["t".into()],
    }
}

async fn register(node: &Node, user: &str) {
    let user = user.to_owned();
    node.ctl
        .parts
        .meta
        .mutate(move |s| Ok(((), vec![s.register_user(&user, "pw", 1)?])))
        .await
        .expect("register");
}

/// Adds a version on `node` and returns its version id.
async fn write(node: &Node, user: &str, name: &str, v: NewVersion) -> String {
    let (user, name) = (user.to_owned(), name.to_owned());
    node.ctl
        .parts
        .meta
        .mutate(move |s| {
            let (view, c) = s.add_version(&user, &name, v, now(), None)?;
            Ok((view.vid, vec![c]))
        })
        .await
        .expect("write")
}

fn now() -> u64 {
    redcloud_meta::clock::system_ms()
}

async fn digest(node: &Node) -> [u8; 32] {
    node.ctl
        .parts
        .meta
        .call(|s| s.digest())
        .await
        .expect("digest")
}

/// Waits until every node has the same metadata digest.
async fn converge(nodes: &[Node]) -> Duration {
    let start = Instant::now();
    loop {
        let mut ds = Vec::new();
        for n in nodes {
            ds.push(digest(n).await);
        }
        if ds.windows(2).all(|w| w[0] == w[1]) {
            return start.elapsed();
        }
        if start.elapsed() > CONVERGE_TIMEOUT {
            let short: Vec<String> = ds.iter().map(|d| hex::encode(&d[..4])).collect();
            panic!(
                "no convergence after {:?}: digests {short:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a user sees on a node: files, tags, winners, conflicts and full histories.
async fn view(node: &Node, user: &str) -> String {
    let user = user.to_owned();
    node.ctl
        .parts
        .meta
        .call(move |s| {
            let files = s.list(&user, &[]).expect("list");
            let mut out = String::new();
            for f in &files {
                let h = s.history(&user, &f.name).expect("history");
                out += &format!(
                    "{} head={} tags={:?} versions={:?}\n",
                    f.name,
                    f.head.vid,
                    f.tags,
                    h.iter().map(|v| &v.vid).collect::<Vec<_>>()
                );
            }
            out += &format!("conflicts={:?}", s.conflicts(&user).expect("conflicts"));
            out
        })
        .await
        .expect("view")
}

async fn stop(nodes: Vec<Node>) {
    for n in nodes {
        n.ctl.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_converge_after_writes_on_each() {
    let nodes = cluster(3).await;
    register(&nodes[0], "alice").await;
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..20 {
            write(n, "alice", &format!("f{i}-{j}"), version(i as u8, 4)).await;
        }
    }
    let took = converge(&nodes).await;
    eprintln!("3 controllers converged {took:?} after the last write");
    let first = view(&nodes[0], "alice").await;
    assert_eq!(
        first.lines().count(),
        61,
        "60 files and the conflicts line:\n{first}"
    );
    for n in &nodes[1..] {
        assert_eq!(view(n, "alice").await, first);
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_controllers_converge() {
    let nodes = cluster(10).await;
    register(&nodes[3], "bob").await;
    for (i, n) in nodes.iter().enumerate() {
        write(n, "bob", &format!("file-{i}"), version(i as u8, 2)).await;
    }
    let took = converge(&nodes).await;
    eprintln!("10 controllers converged {took:?} after the last write");
    let first = view(&nodes[0], "bob").await;
    assert_eq!(first.lines().count(), 11, "{first}");
    for n in &nodes[1..] {
        assert_eq!(view(n, "bob").await, first);
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_catches_up_on_a_large_state() {
    let mut nodes = cluster(2).await;
    register(&nodes[0], "carol").await;
    for j in 0..2_000 {
        write(&nodes[j % 2], "carol", &format!("doc-{j}"), version(7, 3)).await;
    }
    converge(&nodes).await;
    let seed = nodes[0].p2p.clone();
    let started = Instant::now();
    nodes.push(start(vec![seed]).await);
    converge(&nodes).await;
    eprintln!(
        "late joiner caught up on 2,000 files in {:?}",
        started.elapsed()
    );
    assert_eq!(
        view(&nodes[2], "carol").await,
        view(&nodes[0], "carol").await
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_with_writes_on_both_sides_heals_to_identical_winners() {
    let nodes = cluster(3).await;
    register(&nodes[0], "dave").await;
    write(&nodes[0], "dave", "shared.txt", version(1, 2)).await;
    converge(&nodes).await;

    // Cut node 2 off from 0 and 1, both directions.
    let (a, b, c) = (&nodes[0].ctl, &nodes[1].ctl, &nodes[2].ctl);
    let (pa, pb, pc) = (
        a.net.local_peer_id(),
        b.net.local_peer_id(),
        c.net.local_peer_id(),
    );
    a.net.block(pc).await.expect("block");
    b.net.block(pc).await.expect("block");
    c.net.block(pa).await.expect("block");
    c.net.block(pb).await.expect("block");

    let mut acked = Vec::new();
    acked.push(write(&nodes[0], "dave", "shared.txt", version(2, 2)).await);
    acked.push(write(&nodes[2], "dave", "shared.txt", version(3, 2)).await);
    acked.push(write(&nodes[1], "dave", "left.txt", version(4, 2)).await);
    acked.push(write(&nodes[2], "dave", "right.txt", version(5, 2)).await);
    // Each side converges on its own.
    converge(&nodes[..2]).await;
    assert_ne!(digest(&nodes[0]).await, digest(&nodes[2]).await);

    let healed = Instant::now();
    a.net.unblock(pc).await.expect("unblock");
    b.net.unblock(pc).await.expect("unblock");
    c.net.unblock(pa).await.expect("unblock");
    c.net.unblock(pb).await.expect("unblock");
    converge(&nodes).await;
    eprintln!("partition healed in {:?}", healed.elapsed());

    let seen = view(&nodes[0], "dave").await;
    for n in &nodes[1..] {
        assert_eq!(
            view(n, "dave").await,
            seen,
            "same files, winners and conflicts"
        );
    }
    for vid in &acked {
        assert!(
            seen.contains(vid.as_str()),
            "acknowledged version {vid} missing:\n{seen}"
        );
    }
    let conflicts = nodes[0]
        .ctl
        .parts
        .meta
        .call(|s| s.conflicts("dave"))
        .await
        .expect("call")
        .expect("conflicts");
    assert_eq!(
        conflicts.len(),
        1,
        "concurrent writes to shared.txt conflict"
    );
    assert_eq!(conflicts[0].name, "shared.txt");
    assert_eq!(conflicts[0].candidates.len(), 2);
    stop(nodes).await;
}

/// Two controllers whose anti-entropy runs only when they connect (its period is an hour),
/// with `user` registered and gossip flowing: whatever else arrives, arrives by gossip.
async fn gossip_only_pair(user: &str) -> Vec<Node> {
    let hour = Duration::from_secs(3600);
    let first = start_with(Vec::new(), hour).await;
    register(&first, user).await;
    let second = start_with(vec![first.p2p.clone()], hour).await;
    let nodes = vec![first, second];
    converge(&nodes).await;
    // Gossip reaches the peer once its subscription is known: wait for a probe to arrive.
    let mut probe = 0;
    loop {
        write(&nodes[0], user, &format!("probe-{probe}"), version(1, 1)).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && digest(&nodes[0]).await != digest(&nodes[1]).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if digest(&nodes[0]).await == digest(&nodes[1]).await {
            return nodes;
        }
        probe += 1;
        assert!(probe < 15, "no probe reached the peer by gossip in 30 s");
    }
}

/// The commits one group commit makes durable leave in a few gossip messages, not one each
/// (a signature, an envelope and a validation on every peer per message), and the peer gets
/// every one of them by gossip: anti-entropy runs only when the peers connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_made_durable_together_are_gossiped_together() {
    const COMMITS: usize = 64;
    let nodes = gossip_only_pair("gus").await;
    let sent_before = nodes[0].ctl.parts.metrics.gossip_sent.get();
    // Hold the metadata owner so the commits queue up behind it and share one sync.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let meta = nodes[0].ctl.parts.meta.clone();
    let busy = tokio::spawn(async move {
        meta.call(move |_| held.recv_timeout(Duration::from_secs(20)))
            .await
    });
    let writes: Vec<_> = (0..COMMITS)
        .map(|i| {
            let meta = nodes[0].ctl.parts.meta.clone();
            tokio::spawn(async move {
                meta.mutate(move |s| {
                    let (view, c) =
                        s.add_version("gus", &format!("f-{i}"), version(i as u8, 1), now(), None)?;
                    Ok((view.vid, vec![c]))
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.send(()).expect("owner waits");
    busy.await.expect("join").expect("owner").expect("held");
    let mut vids = Vec::new();
    for w in writes {
        vids.push(w.await.expect("join").expect("committed"));
    }
    converge(&nodes).await;
    let sent = nodes[0].ctl.parts.metrics.gossip_sent.get() - sent_before;
    assert!(
        sent <= 8,
        "{COMMITS} commits made durable together were published in {sent} gossip messages"
    );
    let seen = view(&nodes[1], "gus").await;
    for vid in &vids {
        assert!(seen.contains(vid.as_str()), "{vid} missing on the peer");
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_larger_than_a_gossip_message_still_arrives() {
    // Anti-entropy only on connect: the peer must pull the change when it is announced.
    let nodes = gossip_only_pair("erin").await;
    let announced = nodes[0].ctl.parts.metrics.gossip_announcements.get();
    // 3,000 chunks of 36+ bytes each: well over the 64 KiB gossip limit.
    let vid = write(&nodes[0], "erin", "big.bin", version(9, 3_000)).await;
    converge(&nodes).await;
    assert_eq!(
        nodes[0].ctl.parts.metrics.gossip_announcements.get(),
        announced + 1,
        "the change was announced by its heads"
    );
    let seen = view(&nodes[1], "erin").await;
    assert!(seen.contains(&vid), "{seen}");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_rejected_and_the_rest_keep_working() {
    let nodes = cluster(2).await;
    // A hostile node of the same cluster (it holds the secret: a compromised insider),
    // speaking the protocols with random bytes.
    let key = redcloud_p2p::Keypair::generate_ed25519();
    let mut cfg = redcloud_p2p::Config::new(node::network_name("test", 16), key);
    cfg.private_key = Some(test_secret().p2p_key());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
    cfg.bootstrap = vec![nodes[0].p2p.clone()];
    cfg.mdns = false;
    let (evil, _events) = redcloud_p2p::spawn(cfg).await.expect("spawn");
    let target = nodes[0].ctl.net.local_peer_id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !evil.peers().await.expect("peers").contains(&target) {
        assert!(Instant::now() < deadline, "hostile peer never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // Well-formed gossip with a bad inside: more document parts than allowed, an unknown
    // document beside garbage changes, and 255 announcements of heads nobody has (one lookup
    // for all of them; the sessions they start go to a peer that never answers).
    let part = |doc: &str, changes: Vec<u8>, heads: Vec<Vec<u8>>| DocChanges {
        doc: doc.into(),
        changes,
        heads,
    };
    let crafted = [
        Gossip {
            doc: "files/0".into(),
            more: (0..300)
                .map(|_| part("files/1", Vec::new(), vec![junk(32)]))
                .collect(),
            ..Gossip::default()
        },
        Gossip {
            doc: "files/2".into(),
            changes: junk(200),
            more: vec![part("no-such-doc", junk(50), Vec::new())],
            ..Gossip::default()
        },
        Gossip {
            doc: "files/3".into(),
            heads: vec![junk(32)],
            more: (0..255)
                .map(|i| part(&format!("files/{}", i % 16), Vec::new(), vec![junk(32)]))
                .collect(),
            ..Gossip::default()
        },
    ];
    let rejected = &nodes[0].ctl.parts.metrics.rejected_messages;
    for (k, msg) in crafted.iter().enumerate() {
        // The first two must each be rejected: published again until one arrives (the mesh
        // may still be forming). The announcements are valid and go once.
        let want = rejected.get() + 1;
        for round in 0.. {
            let _ = evil.publish(wire::encode(msg)).await;
            if k == 2 {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while rejected.get() < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if rejected.get() >= want {
                break;
            }
            assert!(round < 10, "crafted gossip {k} was never rejected");
        }
    }
    for i in 0..20 {
        let _ = evil.publish(junk(100 + i * 37)).await;
        let answer = evil.request(target, junk(50 + i * 11)).await;
        assert!(
            answer.is_ok(),
            "a malformed request gets an error answer, not a hang"
        );
    }
    register(&nodes[0], "frank").await;
    let vid = write(&nodes[1], "frank", "after-garbage", version(3, 2)).await;
    converge(&nodes).await;
    assert!(view(&nodes[0], "frank").await.contains(&vid));
    assert!(rejected.get() >= 2, "garbage was counted as rejected");
    evil.shutdown().await.expect("shutdown");
    stop(nodes).await;
}
