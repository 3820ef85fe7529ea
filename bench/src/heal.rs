//! `heal/{k}`: two controllers diverge by k changes (one side writes; then both sides write k
//! concurrently), reconnect, and converge by anti-entropy. Reported: bytes the sync exchange
//! carried (requests and answers, both directions) over the bytes of the changes the other
//! side was missing, and the round trips taken. Also: the cost of reconnecting equal documents.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::Profile;
use crate::cluster::Cluster;
use crate::results::{Report, Target, ms};

const BENCH: &str = "heal";
/// Long, so only the sessions that a reconnect starts are measured (no periodic ones).
const SYNC_INTERVAL: Duration = Duration::from_secs(300);
const LIMIT: Duration = Duration::from_secs(120);

/// Sync traffic counters summed over both nodes.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    bytes: u64,
    round_trips: u64,
}

fn traffic(cluster: &Cluster) -> Traffic {
    cluster
        .nodes
        .iter()
        .fold(Traffic::default(), |t, n| Traffic {
            bytes: t.bytes
                + n.metrics.request_bytes_sent.get()
                + n.metrics.response_bytes_received.get(),
            round_trips: t.round_trips + n.metrics.requests_sent.get(),
        })
}

async fn partition(cluster: &Cluster, blocked: bool) -> Result<()> {
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    if blocked {
        a.net.block(b.peer).await?;
        b.net.block(a.peer).await?;
        let start = Instant::now();
        while !a.net.peers().await?.is_empty() || !b.net.peers().await?.is_empty() {
            anyhow::ensure!(start.elapsed() < LIMIT, "partition did not take");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else {
        a.net.unblock(b.peer).await?;
        b.net.unblock(a.peer).await?;
        // Dial at once rather than waiting for the redial backoff.
        let _ = a.net.dial(b.addr.parse()?).await;
    }
    Ok(())
}

/// Heals the partition and waits for equal documents and a quiet exchange; returns the traffic
/// of the heal and how long convergence took.
async fn heal(cluster: &Cluster) -> Result<(Traffic, Duration)> {
    let before = traffic(cluster);
    let start = Instant::now();
    partition(cluster, false).await?;
    let took = loop {
        // Equal digests and both sessions finished (the counters stopped moving).
        let t1 = traffic(cluster);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t2 = traffic(cluster);
        if t1.bytes == t2.bytes && t2.round_trips > before.round_trips {
            let da = cluster.nodes[0].meta.call(|s| s.digest()).await?;
            let db = cluster.nodes[1].meta.call(|s| s.digest()).await?;
            if da == db {
                break start.elapsed();
            }
        }
        anyhow::ensure!(start.elapsed() < LIMIT, "no convergence after the heal");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = traffic(cluster);
    Ok((
        Traffic {
            bytes: after.bytes - before.bytes,
            round_trips: after.round_trips - before.round_trips,
        },
        took,
    ))
}

/// Runs every `heal/{k}`.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let ks: &[usize] = match profile {
        Profile::Full => &[1, 10, 100, 1000],
        Profile::Quick => &[1, 10],
    };
    let mut cluster = Cluster::start(2, SYNC_INTERVAL).await?;
    cluster.wait_mesh(LIMIT).await?;
    cluster.wait_equal(LIMIT).await?;

    // Equal documents.
    partition(&cluster, true).await?;
    let (t, took) = heal(&cluster).await?;
    report.info(
        BENCH,
        "equal docs",
        "sync bytes (both directions)",
        t.bytes as f64,
        "B",
    );
    report.figure(
        BENCH,
        "equal docs",
        "round trips",
        t.round_trips as f64,
        "",
        Some(Target::AtMost(1.0)),
        "one session per pair, started by the smaller peer id",
    );
    report.info(BENCH, "equal docs", "time to equal", ms(took), "ms");

    let mut serial = 0usize;
    for &k in ks {
        for concurrent in [false, true] {
            let case = if concurrent {
                format!("k={k}+{k}")
            } else {
                format!("k={k}")
            };
            partition(&cluster, true).await?;
            let mut missing = 0u64;
            let writers: &[usize] = if concurrent { &[0, 1] } else { &[0] };
            for &w in writers {
                for _ in 0..k {
                    serial += 1;
                    let c = cluster.nodes[w]
                        .write(format!("h-{serial}"), (serial % 251) as u8)
                        .await?;
                    missing += c.changes.len() as u64;
                }
            }
            let (t, took) = heal(&cluster).await?;
            let ratio = t.bytes as f64 / missing as f64;
            let target = if k == 1 { 1.7 } else { 1.1 };
            report.info(BENCH, &case, "missing change bytes", missing as f64, "B");
            report.info(
                BENCH,
                &case,
                "sync bytes (both directions)",
                t.bytes as f64,
                "B",
            );
            report.figure(
                BENCH,
                &case,
                "sync bytes / missing bytes",
                ratio,
                "x",
                Some(Target::AtMost(target)),
                "",
            );
            report.info(BENCH, &case, "round trips", t.round_trips as f64, "");
            report.info(BENCH, &case, "time to equal", ms(took), "ms");
        }
    }
    cluster.drain();
    cluster.stop().await;
    Ok(())
}
