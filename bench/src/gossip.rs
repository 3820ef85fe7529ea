//! `gossip_converge/{N}` and `gossip_throughput`: how fast one committed change reaches every
//! controller, against the same change bytes pushed over pre-connected raw TCP sockets to N-1
//! receivers that apply them with Automerge.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::{Automerge, ChangeHash};
use redcloud_meta::handle::MetaHandle;
use redcloud_meta::{MemStorage, MetaStore, NodeId};

use crate::Profile;
use crate::cluster::{Cluster, USER, version};
use crate::probe::change_hashes;
use crate::results::{Latency, Report, Target, ms};

const BENCH: &str = "gossip_converge";
/// Anti-entropy period of the nodes: the controller's default.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A change not everywhere after this is counted as lost by gossip.
const SAMPLE_LIMIT: Duration = Duration::from_secs(5);

/// Per-N targets from issue 8: p50 and p99 in ms.
fn targets(n: usize) -> (f64, f64) {
    match n {
        0..=3 => (0.6, 2.0),
        4..=10 => (2.0, 6.0),
        _ => (6.0, 20.0),
    }
}

/// Where one change was applied, per node: (applied in memory, durable).
#[derive(Debug, Default)]
struct Spread {
    first: Option<Instant>,
    nodes: HashMap<usize, (Instant, Instant)>,
}

/// Runs `gossip_converge/{n}`; returns the p99 (for the throughput comparison).
pub async fn converge(report: &mut Report, profile: Profile, n: usize) -> Result<Duration> {
    let case = format!("N={n}");
    let samples = profile.pick(if n >= 32 { 150 } else { 300 }, 5);
    let started = Instant::now();
    let mut cluster = Cluster::start(n, SYNC_INTERVAL).await?;
    let startup = started.elapsed();
    let mesh = cluster.wait_mesh(Duration::from_secs(60)).await?;
    cluster.wait_equal(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.drain();

    for i in 0..profile.pick(20, 2) {
        sample(&mut cluster, &format!("warm-{i}")).await?;
    }
    let ports: HashSet<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    // Background traffic (anti-entropy digests, pings, gossipsub heartbeats) over a window
    // as long as the measurement, subtracted from the wire figure below.
    let sent_before = cluster.nodes[0].metrics.gossip_bytes_sent.get();
    let msgs_before = cluster.nodes[0].metrics.gossip_sent.get();
    let mut applied = Vec::new();
    let mut durable = Vec::new();
    let mut lost = 0usize;
    let wire_start = crate::wire::bytes_received(&ports);
    let run_start = Instant::now();
    for i in 0..samples {
        match sample(&mut cluster, &format!("m-{i}")).await? {
            Some((a, d)) => {
                applied.push(a);
                durable.push(d);
            }
            None => lost += 1,
        }
    }
    let run_time = run_start.elapsed();
    let wire_run = crate::wire::bytes_received(&ports);
    tokio::time::sleep(run_time).await;
    let wire_idle = crate::wire::bytes_received(&ports);
    let payload = (cluster.nodes[0].metrics.gossip_bytes_sent.get() - sent_before) as f64
        / (cluster.nodes[0].metrics.gossip_sent.get() - msgs_before).max(1) as f64;
    cluster.stop().await;

    let reference = {
        let count = samples;
        tokio::task::spawn_blocking(move || raw_reference(n, count)).await??
    };
    let ours = Latency::of(&applied).context("no sample converged")?;
    let ours_durable = Latency::of(&durable).context("no sample converged")?;
    let theirs = Latency::of(&reference).context("no reference sample")?;
    let (t50, t99) = targets(n);
    report.info(BENCH, &case, "startup of all nodes", ms(startup), "ms");
    report.info(
        BENCH,
        &case,
        "mesh formation after last start",
        ms(mesh),
        "ms",
    );
    report.figure(
        BENCH,
        &case,
        "p50 applied everywhere",
        ms(ours.p50),
        "ms",
        Some(Target::AtMost(t50)),
        "",
    );
    report.figure(
        BENCH,
        &case,
        "p99 applied everywhere",
        ms(ours.p99),
        "ms",
        Some(Target::AtMost(t99)),
        "",
    );
    report.info(
        BENCH,
        &case,
        "p50 durable everywhere",
        ms(ours_durable.p50),
        "ms",
    );
    report.info(
        BENCH,
        &case,
        "p99 durable everywhere",
        ms(ours_durable.p99),
        "ms",
    );
    report.info(
        BENCH,
        &case,
        "reference p50 (raw TCP + Automerge)",
        ms(theirs.p50),
        "ms",
    );
    report.info(BENCH, &case, "reference p99", ms(theirs.p99), "ms");
    report.figure(
        BENCH,
        &case,
        "ratio p50 to reference",
        ms(ours.p50) / ms(theirs.p50),
        "x",
        Some(Target::AtMost(2.0)),
        "",
    );
    report.figure(
        BENCH,
        &case,
        "ratio p99 to reference",
        ms(ours.p99) / ms(theirs.p99),
        "x",
        Some(Target::AtMost(3.0)),
        "",
    );
    report.info(BENCH, &case, "samples", ours.count as f64, "");
    report.info(
        BENCH,
        &case,
        "lost by gossip (sync delivered)",
        lost as f64,
        "",
    );
    report.info(BENCH, &case, "gossip payload", payload, "B");
    if let (Some(a), Some(b), Some(c)) = (wire_start, wire_run, wire_idle) {
        let during = b.saturating_sub(a) as f64;
        let idle = c.saturating_sub(b) as f64;
        let per_node_msg = (during - idle).max(0.0) / (samples * (n - 1)) as f64;
        report.info(
            BENCH,
            &case,
            "wire bytes per node per message",
            per_node_msg,
            "B",
        );
        report.figure(
            BENCH,
            &case,
            "payload copies per node per message",
            per_node_msg / payload,
            "x",
            None,
            "wire bytes (idle traffic subtracted) / gossip payload; includes envelope, signature, noise and yamux framing",
        );
    }
    Ok(ours.p99)
}

/// Commits one change on node 0 and waits until every node applied it. `None` if it did not
/// reach everyone within [`SAMPLE_LIMIT`].
async fn sample(cluster: &mut Cluster, name: &str) -> Result<Option<(Duration, Duration)>> {
    let commit = cluster.nodes[0].write(name.to_owned(), 7).await?;
    let target = *change_hashes(&commit.changes)
        .last()
        .context("a commit carries a change")?;
    let n = cluster.nodes.len();
    let deadline = Instant::now() + SAMPLE_LIMIT;
    let mut spread = Spread::default();
    while spread.first.is_none() || spread.nodes.len() < n - 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(ev)) = tokio::time::timeout(left, cluster.events.recv()).await else {
            return Ok(None);
        };
        if !ev.hashes().contains(&target) {
            continue;
        }
        if ev.node == 0 {
            spread.first = Some(ev.durable);
        } else {
            spread
                .nodes
                .entry(ev.node)
                .or_insert((ev.applied, ev.durable));
        }
    }
    let t0 = spread.first.context("origin event")?;
    let applied = spread.nodes.values().map(|v| v.0).max().unwrap_or(t0);
    let durable = spread.nodes.values().map(|v| v.1).max().unwrap_or(t0);
    Ok(Some((
        applied.saturating_duration_since(t0),
        durable.saturating_duration_since(t0),
    )))
}

/// The reference: a metadata store commits the same kind of change; its bytes go over
/// pre-connected TCP sockets (TCP_NODELAY, one write per receiver, as flood publishing does)
/// to `n - 1` receiver threads, each applying them to its copy of the documents with
/// `Automerge::load_incremental`. One sample is the time until the last receiver applied.
pub fn raw_reference(n: usize, samples: usize) -> Result<Vec<Duration>> {
    let node = NodeId::new("reference")?;
    let mut origin = MetaStore::open(
        Box::new(MemStorage::new()),
        redcloud_meta::Config::new(node.clone()),
    )?;
    let docs = origin.docs();
    origin.compact_all()?;
    let mut storage = origin.into_storage();
    let mut snapshots = Vec::new();
    for d in &docs {
        let stored = storage.load(&d.to_string())?;
        snapshots.push(stored.snapshot.context("compacted document")?);
    }
    let mut origin = MetaStore::open(storage, redcloud_meta::Config::new(node))?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (done_tx, done_rx) = std_mpsc::channel::<Instant>();
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for _ in 1..n {
        let out = TcpStream::connect(addr)?;
        out.set_nodelay(true)?;
        let (input, _) = listener.accept()?;
        input.set_nodelay(true)?;
        let snapshots = snapshots.clone();
        let done = done_tx.clone();
        threads.push(std::thread::spawn(move || {
            receiver(input, &snapshots, done)
        }));
        senders.push(out);
    }
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let (_, commit) = origin.add_version(
            USER,
            &format!("r-{i}"),
            version(7, 2),
            redcloud_meta::clock::system_ms(),
            None,
        )?;
        let index = docs.iter().position(|d| *d == commit.doc).unwrap_or(0) as u16;
        let mut frame = Vec::with_capacity(commit.changes.len() + 6);
        frame.extend_from_slice(&(commit.changes.len() as u32).to_le_bytes());
        frame.extend_from_slice(&index.to_le_bytes());
        frame.extend_from_slice(&commit.changes);
        let t0 = Instant::now();
        for s in &mut senders {
            s.write_all(&frame)?;
        }
        let mut last = t0;
        for _ in 1..n {
            let t = done_rx
                .recv_timeout(SAMPLE_LIMIT)
                .context("reference receiver stalled")?;
            last = last.max(t);
        }
        if i >= 10 {
            out.push(last - t0);
        }
    }
    drop(senders);
    for t in threads {
        let _ = t.join();
    }
    Ok(out)
}

fn receiver(mut input: TcpStream, snapshots: &[Vec<u8>], done: std_mpsc::Sender<Instant>) {
    let mut docs: Vec<Automerge> = snapshots
        .iter()
        .filter_map(|s| Automerge::load(s).ok())
        .collect();
    let mut header = [0u8; 6];
    let mut buf = Vec::new();
    while input.read_exact(&mut header).is_ok() {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let index = u16::from_le_bytes([header[4], header[5]]) as usize;
        buf.resize(len, 0);
        if input.read_exact(&mut buf).is_err() {
            return;
        }
        if let Some(doc) = docs.get_mut(index) {
            let _ = doc.load_incremental(&buf);
        }
        let _ = done.send(Instant::now());
    }
}

/// `gossip_throughput`: 1,000 changes per second published round-robin by all `n` nodes;
/// p99 convergence against the single-message p99 measured first on the same cluster.
pub async fn throughput(report: &mut Report, profile: Profile, n: usize) -> Result<()> {
    const BENCH: &str = "gossip_throughput";
    let case = format!("N={n} 1000/s");
    let rate = 1000u64;
    let duration = profile.pick(Duration::from_secs(5), Duration::from_millis(500));
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let mut cluster = Cluster::start(n, SYNC_INTERVAL).await?;
    cluster.wait_mesh(Duration::from_secs(60)).await?;
    cluster.wait_equal(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.drain();
    let mut single = Vec::new();
    for i in 0..profile.pick(200, 5) {
        if let Some((a, _)) = sample(&mut cluster, &format!("s-{i}")).await? {
            single.push(a);
        }
    }
    let single_p99 = Latency::of(&single).map(|l| l.p99);
    cluster.drain();

    let metas: Vec<MetaHandle> = cluster.nodes.iter().map(|n| n.meta.clone()).collect();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut writes = tokio::task::JoinSet::new();
        let start = Instant::now();
        for i in 0..total {
            tick.tick().await;
            let meta = metas[i % metas.len()].clone();
            writes.spawn(async move {
                meta.mutate(move |s| {
                    let (_, c) = s.add_version(
                        USER,
                        &format!("t-{i}"),
                        version(3, 2),
                        redcloud_meta::clock::system_ms(),
                        None,
                    )?;
                    Ok(((), vec![c]))
                })
                .await
            });
        }
        let issued = start.elapsed();
        while let Some(r) = writes.join_next().await {
            r??;
        }
        anyhow::Ok((issued, start.elapsed()))
    });

    // Every change: when and where it was applied; the first event is its origin's commit.
    let mut spread: HashMap<ChangeHash, Spread> = HashMap::new();
    let mut complete = 0usize;
    let mut appends = vec![0usize; n];
    let mut changes = vec![0usize; n];
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    while complete < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(ev)) = tokio::time::timeout(left, cluster.events.recv()).await else {
            break;
        };
        let hashes = ev.hashes();
        appends[ev.node] += 1;
        changes[ev.node] += hashes.len();
        for h in hashes {
            let s = spread.entry(h).or_default();
            match s.first {
                None => s.first = Some(ev.durable),
                Some(_) => {
                    s.nodes.entry(ev.node).or_insert((ev.applied, ev.durable));
                    if s.nodes.len() == n - 1 {
                        complete += 1;
                    }
                }
            }
        }
    }
    let (issued, committed) = publisher.await??;
    cluster.stop().await;

    let mut lat = Vec::new();
    for s in spread.values() {
        if let (Some(t0), true) = (s.first, s.nodes.len() == n - 1) {
            let last = s.nodes.values().map(|v| v.0).max().unwrap_or(t0);
            lat.push(last.saturating_duration_since(t0));
        }
    }
    let Some(l) = Latency::of(&lat) else {
        bail!("no change converged under load");
    };
    report.info(BENCH, &case, "changes issued", total as f64, "");
    report.info(BENCH, &case, "issue time", ms(issued), "ms");
    report.info(
        BENCH,
        &case,
        "commit rate achieved",
        total as f64 / committed.as_secs_f64(),
        "/s",
    );
    report.info(BENCH, &case, "changes converged", lat.len() as f64, "");
    report.info(BENCH, &case, "p50 applied everywhere", ms(l.p50), "ms");
    report.info(BENCH, &case, "p99 applied everywhere", ms(l.p99), "ms");
    let batch = changes.iter().sum::<usize>() as f64 / appends.iter().sum::<usize>().max(1) as f64;
    report.info(BENCH, &case, "changes per apply batch", batch, "");
    if let Some(single) = single_p99 {
        report.info(
            BENCH,
            &case,
            "single-message p99 (same run)",
            ms(single),
            "ms",
        );
        report.figure(
            BENCH,
            &case,
            "p99 under load / single-message p99",
            ms(l.p99) / ms(single),
            "x",
            Some(Target::AtMost(2.0)),
            "",
        );
    }
    Ok(())
}
