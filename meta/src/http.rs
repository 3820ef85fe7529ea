//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` answers the controller's
//! counters and gauges in the text exposition format; anything else is a 404. Requests are
//! read with a size cap and a deadline, one connection at a time per task, so a slow or
//! hostile scraper cannot exhaust anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::service::Components;

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve_metrics(
    listener: Arc<TcpListener>,
    parts: Arc<Components>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let parts = parts.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &parts).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, parts: &Components) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if head.is_err() {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&buf);
    let ok = line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?");
    let (status, body) = if ok {
        ("200 OK", render(parts))
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn render(p: &Components) -> String {
    let mut out = render_counters(p);
    out += "# HELP redcloud_peer_seconds_since_sync Seconds since a peer last held exactly our documents.\n";
    out += "# TYPE redcloud_peer_seconds_since_sync gauge\n";
    for (peer, ms) in p.peers.last_equal_ago_ms() {
        out += &format!(
            "redcloud_peer_seconds_since_sync{{peer=\"{peer}\"}} {:.3}\n",
            ms as f64 / 1000.0
        );
    }
    out
}

fn render_counters(p: &Components) -> String {
    let r = &p.repair;
    let peers = p.peers.connected_ids().len() as f64;
    let servers = p.directory.read(|reg| reg.servers().count()) as f64;
    let clock = p.clock.health();
    p.metrics.render(&[
        ("peers", "Connected controllers.", peers),
        (
            "chunkservers_known",
            "Chunkservers this controller has heard from.",
            servers,
        ),
        (
            "chunks_live",
            "Distinct chunks referenced by retained versions.",
            r.total_chunks.get() as f64,
        ),
        (
            "chunks_under_replicated",
            "Live chunks below their replication target.",
            r.under_replicated.get() as f64,
        ),
        (
            "chunks_lost",
            "Live chunks with no copy on a healthy chunkserver.",
            r.lost.get() as f64,
        ),
        (
            "repair_queued",
            "Repair copies planned but not started.",
            r.queued.get() as f64,
        ),
        (
            "repair_in_flight",
            "Repair copies running.",
            r.in_flight.get() as f64,
        ),
        (
            "replication_dropped_commits",
            "Commits not queued for gossip (sent by sync instead).",
            p.meta.dropped_commits() as f64,
        ),
        (
            "clock_offset_ms",
            "Median of the peers' and chunkservers' clocks minus this controller's raw clock.",
            clock.median_offset_ms as f64,
        ),
        (
            "clock_correction_ms",
            "Correction applied to this controller's clock.",
            clock.correction_ms as f64,
        ),
        (
            "clock_skewed",
            "1 when this controller's clock disagrees with its witnesses (no trash purge).",
            f64::from(u8::from(clock.state == crate::skew::ClockState::Skewed)),
        ),
    ])
}
