//! In-process clusters on real sockets (127.0.0.1 only, mDNS off). Every wait is bounded.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use rand::RngCore;
use redcloud_p2p::{
    Config, Error, Event, Handle, Keypair, MessageId, Multiaddr, PeerId, Validation, spawn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for anything that should happen "within seconds" (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    handle: Handle,
    events: mpsc::Receiver<Event>,
    /// Listen address without the peer id.
    addr: Multiaddr,
}

impl Node {
    fn id(&self) -> PeerId {
        self.handle.local_peer_id()
    }

    /// `addr/p2p/<id>`.
    fn full_addr(&self) -> String {
        format!("{}/p2p/{}", self.addr, self.id())
    }

    fn port(&self) -> u16 {
        self.addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap()
    }

    /// Next gossip event, skipping connection events; `None` if none arrives within `within`.
    async fn next_gossip(
        &mut self,
        within: Duration,
    ) -> Option<(PeerId, Option<PeerId>, MessageId, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Gossip {
                    source,
                    origin,
                    message_id,
                    data,
                })) => {
                    return Some((source, origin, message_id, data));
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(cluster: &str, bootstrap: Vec<String>) -> Config {
    let mut config = Config::new(cluster, Keypair::generate_ed25519());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    config.bootstrap = bootstrap;
    config.request_timeout = Duration::from_secs(10);
    config
}

async fn start(config: Config) -> Node {
    init_tracing();
    let (handle, events) = timeout(WAIT, spawn(config))
        .await
        .expect("spawn in time")
        .expect("spawn");
    let addr = handle
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("a listen address");
    Node {
        handle,
        events,
        addr,
    }
}

async fn node(cluster: &str, bootstrap: Vec<String>) -> Node {
    start(config(cluster, bootstrap)).await
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn peer_set(handle: &Handle) -> HashSet<PeerId> {
    handle.peers().await.unwrap().into_iter().collect()
}

/// Waits until `handle`'s connected cluster peers are exactly `expected`.
async fn wait_peers(handle: &Handle, expected: &[PeerId]) -> Duration {
    let expected: HashSet<PeerId> = expected.iter().copied().collect();
    wait_for("peers", || async { peer_set(handle).await == expected }).await
}

/// Waits until `handle`'s gossip mesh contains every peer of `expected`.
async fn wait_mesh(handle: &Handle, expected: &[PeerId]) {
    wait_for("gossip mesh", || async {
        let mesh: HashSet<PeerId> = handle.gossip_peers().await.unwrap().into_iter().collect();
        expected.iter().all(|p| mesh.contains(p))
    })
    .await;
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

/// Answers every request with the reversed payload, until the node shuts down.
fn serve_reversed(mut node: Node) -> Handle {
    let handle = node.handle.clone();
    let responder = handle.clone();
    tokio::spawn(async move {
        while let Some(event) = node.events.recv().await {
            if let Event::Request { data, reply, .. } = event {
                let reversed: Vec<u8> = data.into_iter().rev().collect();
                let _ = responder.respond(reply, reversed).await;
            }
        }
    });
    handle
}

#[tokio::test]
async fn chain_bootstrap_connects_everyone_and_gossip_arrives_exactly() {
    let a = node("chain", vec![]).await;
    let mut b = node("chain", vec![a.full_addr()]).await;
    // C knows only B's address, without its peer id; it learns A through B.
    let mut c = node("chain", vec![b.addr.to_string()]).await;
    let (ida, idb, idc) = (a.id(), b.id(), c.id());
    let connected = wait_peers(&c.handle, &[ida, idb]).await;
    wait_peers(&a.handle, &[idb, idc]).await;
    wait_peers(&b.handle, &[ida, idc]).await;
    eprintln!("3-node chain fully connected after {connected:?}");
    wait_mesh(&a.handle, &[idb, idc]).await;

    let sent = random_bytes(10_000);
    let published = Instant::now();
    let id = a.handle.publish(sent.clone()).await.unwrap();
    for receiver in [&mut b, &mut c] {
        let (source, origin, message_id, data) =
            receiver.next_gossip(WAIT).await.expect("gossip arrives");
        assert_eq!(data, sent, "bytes arrive exactly as sent");
        assert_eq!(origin, Some(ida));
        assert_eq!(message_id, id);
        assert!(
            receiver
                .handle
                .report_validation(message_id, source, Validation::Accept)
                .await
                .unwrap()
        );
    }
    eprintln!(
        "gossip delivered to both peers in {:?}",
        published.elapsed()
    );
    assert_eq!(a.handle.metrics().gossip_published, 1);
    assert_eq!(b.handle.metrics().gossip_received, 1);
}

#[tokio::test]
async fn rejected_gossip_is_not_forwarded_but_accepted_gossip_is() {
    // Line topology A - B - C: A refuses C, so C hears from A only through B.
    let a = node("line", vec![]).await;
    let mut b = node("line", vec![a.full_addr()]).await;
    let c_config = config("line", vec![b.full_addr()]);
    let idc = c_config.keypair.public().to_peer_id();
    a.handle.block(idc).await.unwrap();
    let mut c = start(c_config).await;
    let (ida, idb) = (a.id(), b.id());
    wait_peers(&b.handle, &[ida, idc]).await;
    wait_peers(&c.handle, &[idb]).await;
    assert_eq!(peer_set(&a.handle).await, HashSet::from([idb]));
    wait_mesh(&b.handle, &[ida, idc]).await;

    let bad = b"invalid change".to_vec();
    a.handle.publish(bad.clone()).await.unwrap();
    let (source, _, id, data) = b.next_gossip(WAIT).await.expect("B gets the bad message");
    assert_eq!(data, bad);
    b.handle
        .report_validation(id, source, Validation::Reject)
        .await
        .unwrap();

    let good = b"valid change".to_vec();
    a.handle.publish(good.clone()).await.unwrap();
    let (source, _, id, data) = b.next_gossip(WAIT).await.expect("B gets the good message");
    assert_eq!(data, good);
    assert!(
        b.handle
            .report_validation(id, source, Validation::Accept)
            .await
            .unwrap()
    );

    let (source, origin, _, data) = c
        .next_gossip(WAIT)
        .await
        .expect("C gets the accepted message");
    assert_eq!(
        data, good,
        "the rejected message never reaches C; the accepted one does"
    );
    assert_eq!(
        (source, origin),
        (idb, Some(ida)),
        "forwarded by B, published by A"
    );
    assert!(
        c.next_gossip(Duration::from_millis(500)).await.is_none(),
        "nothing else arrives"
    );
    assert_eq!(b.handle.metrics().gossip_rejected, 1);
}

#[tokio::test]
async fn request_response_carries_5_mib_and_oversize_fails_cleanly() {
    let a_node = node("rr", vec![]).await;
    let a_full = a_node.full_addr();
    let a = serve_reversed(a_node);
    let b = serve_reversed(node("rr", vec![a_full.clone()]).await);
    // S accepts at most 1 MiB per request or response.
    let mut small = config("rr", vec![a_full]);
    small.max_request_size = 1024 * 1024;
    let s = serve_reversed(start(small).await);
    let (ida, idb, ids) = (a.local_peer_id(), b.local_peer_id(), s.local_peer_id());
    wait_peers(&b, &[ida, ids]).await;
    wait_peers(&s, &[ida, idb]).await;

    let payload = random_bytes(5 * 1024 * 1024);
    let started = Instant::now();
    let response = timeout(WAIT, a.request(idb, payload.clone()))
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "5 MiB request + 5 MiB response round trip: {:?}",
        started.elapsed()
    );
    assert_eq!(response.len(), payload.len());
    assert!(
        response.iter().eq(payload.iter().rev()),
        "response bytes are exact"
    );

    // B sends S more than S accepts: S refuses the frame from its header, B's request fails
    // quickly (not a timeout), and neither node is harmed.
    let started = Instant::now();
    let err = timeout(WAIT, b.request(ids, random_bytes(2 * 1024 * 1024)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::RequestFailed { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        started.elapsed()
    );
    wait_for("S counts the oversize request", || async {
        s.metrics().rejected_oversize >= 1
    })
    .await;
    // S's limit also applies to what it sends: refused locally, before any IO.
    let err = s
        .request(idb, random_bytes(1024 * 1024 + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");

    let echo = timeout(WAIT, b.request(ids, b"still alive".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, b"evila llits");
    let echo = timeout(WAIT, s.request(idb, b"abc".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, b"cba");
    assert_eq!(peer_set(&s).await, HashSet::from([ida, idb]));
}

#[tokio::test]
async fn gossip_over_the_limit_is_too_large_and_at_the_limit_is_delivered() {
    let a = node("size", vec![]).await;
    let mut b = node("size", vec![a.full_addr()]).await;
    wait_peers(&a.handle, &[b.id()]).await;
    let limit = redcloud_p2p::config::DEFAULT_MAX_GOSSIP_SIZE;
    let err = a.handle.publish(vec![7; limit + 1]).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { size, limit: l } if size == limit + 1 && l == limit),
        "{err:?}"
    );
    // Exactly at the limit still fits on the wire, envelope included.
    let at_limit = random_bytes(limit);
    a.handle.publish(at_limit.clone()).await.unwrap();
    let (_, _, _, data) = b
        .next_gossip(WAIT)
        .await
        .expect("message at the limit arrives");
    assert_eq!(data, at_limit);
    // Publishing with no subscribed peer is reported, and harmless.
    let lonely = node("size-alone", vec![]).await;
    assert!(matches!(
        lonely.handle.publish(b"x".to_vec()).await,
        Err(Error::NoPeers)
    ));
}

#[tokio::test]
async fn block_disconnects_and_holds_then_unblock_reconnects() {
    let mut a = node("partition", vec![]).await;
    let mut b = node("partition", vec![a.full_addr()]).await;
    let (ida, idb) = (a.id(), b.id());
    wait_peers(&a.handle, &[idb]).await;
    wait_peers(&b.handle, &[ida]).await;

    a.handle.block(idb).await.unwrap();
    wait_peers(&a.handle, &[]).await;
    wait_peers(&b.handle, &[]).await;
    // B keeps redialling A (it was not told anything), A keeps refusing: still apart later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(peer_set(&a.handle).await.is_empty() && peer_set(&b.handle).await.is_empty());
    assert!(matches!(
        a.handle.publish(b"during".to_vec()).await,
        Err(Error::NoPeers)
    ));

    a.handle.unblock(idb).await.unwrap();
    let healed = wait_peers(&a.handle, &[idb]).await;
    wait_peers(&b.handle, &[ida]).await;
    eprintln!("partition healed {healed:?} after unblock");
    assert!(
        healed < Duration::from_secs(10),
        "reconnected within the redial bound: {healed:?}"
    );

    // Events tell the story in order, and gossip flows again.
    let mut seen = Vec::new();
    while let Ok(event) = a.events.try_recv() {
        match event {
            Event::PeerConnected(p) => seen.push(("up", p)),
            Event::PeerDisconnected(p) => seen.push(("down", p)),
            _ => {}
        }
    }
    assert_eq!(seen, [("up", idb), ("down", idb), ("up", idb)]);
    wait_mesh(&a.handle, &[idb]).await;
    a.handle.publish(b"after heal".to_vec()).await.unwrap();
    assert_eq!(
        b.next_gossip(WAIT).await.expect("gossip after heal").3,
        b"after heal"
    );
}

#[tokio::test]
async fn host_port_and_dns_name_bootstrap_entries_work() {
    let a = node("names", vec![]).await;
    let by_ip = node("names", vec![format!("127.0.0.1:{}", a.port())]).await;
    let by_name = node("names", vec![format!("localhost:{}", a.port())]).await;
    wait_peers(&by_ip.handle, &[a.id(), by_name.id()]).await;
    wait_peers(&by_name.handle, &[a.id(), by_ip.id()]).await;
    wait_peers(&a.handle, &[by_ip.id(), by_name.id()]).await;
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_hurt_the_node() {
    let mut a_config = config("garbage", vec![]);
    // Bounds how long a connection may take to upgrade, garbage ones included.
    a_config.dial_timeout = Duration::from_secs(2);
    let a_node = start(a_config).await;
    let (target, a_full) = (format!("127.0.0.1:{}", a_node.port()), a_node.full_addr());
    let a = serve_reversed(a_node);
    let b = node("garbage", vec![a_full]).await;
    wait_peers(&b.handle, &[a.local_peer_id()]).await;

    let attacks = (0..5).map(|round| {
        let target = target.clone();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&target).await.unwrap();
            let garbage = random_bytes(if round == 0 { 16 } else { 64 * 1024 });
            let _ = stream.write_all(&garbage).await;
            // The node hangs up, at the latest when the upgrade deadline passes.
            let mut sink = Vec::new();
            timeout(Duration::from_secs(6), stream.read_to_end(&mut sink))
                .await
                .is_ok()
        })
    });
    for closed in futures::future::join_all(attacks).await {
        assert!(
            closed.unwrap(),
            "node closed the garbage connection in time"
        );
    }
    wait_for("garbage counted", || async {
        a.metrics().rejected_malformed >= 5
    })
    .await;

    let echo = timeout(WAIT, b.handle.request(a.local_peer_id(), b"ok?".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, b"?ko");
    assert_eq!(
        peer_set(&b.handle).await,
        HashSet::from([a.local_peer_id()])
    );
}

#[tokio::test]
async fn different_clusters_never_exchange_gossip() {
    let x1 = node("cluster-x", vec![]).await;
    let mut x2 = node("cluster-x", vec![x1.full_addr()]).await;
    // Misconfigured: Y points at X's node. They meet, learn they differ, and part.
    let mut y = node("cluster-y", vec![x1.full_addr()]).await;
    wait_peers(&x1.handle, &[x2.id()]).await;
    // Whichever side hears the other's identify first hangs up.
    wait_for("the clusters spot each other", || async {
        x1.handle.metrics().foreign_peers + y.handle.metrics().foreign_peers >= 1
    })
    .await;
    wait_mesh(&x1.handle, &[x2.id()]).await;

    x1.handle.publish(b"cluster x news".to_vec()).await.unwrap();
    assert_eq!(
        x2.next_gossip(WAIT).await.expect("X2 hears X1").3,
        b"cluster x news"
    );
    assert!(
        y.next_gossip(Duration::from_secs(1)).await.is_none(),
        "Y never hears X"
    );
    assert!(peer_set(&y.handle).await.is_empty());
    assert!(matches!(
        y.handle.publish(b"y".to_vec()).await,
        Err(Error::NoPeers)
    ));
    assert!(x2.next_gossip(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn shutdown_stops_the_node_and_peers_notice() {
    let a = node("stop", vec![]).await;
    let mut b = node("stop", vec![a.full_addr()]).await;
    wait_peers(&b.handle, &[a.id()]).await;
    a.handle.shutdown().await.unwrap();
    assert!(matches!(
        a.handle.publish(b"x".to_vec()).await,
        Err(Error::Shutdown)
    ));
    let ida = a.id();
    let down = timeout(WAIT, async {
        while let Some(event) = b.events.recv().await {
            if matches!(event, Event::PeerDisconnected(p) if p == ida) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(down, Ok(true));
}
