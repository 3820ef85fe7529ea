//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` answers the controller's
//! counters and gauges in the text exposition format; anything else is a 404. Requests are
//! read with a size cap and a deadline, one connection at a time per task, so a slow or
//! hostile scraper cannot exhaust anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::service::{Shared, load};

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &shared).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
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
        ("200 OK", render(shared))
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

fn render(shared: &Shared) -> String {
    let mut out = render_counters(shared);
    out += "# HELP redcloud_peer_seconds_since_sync Seconds since a peer last held exactly our documents.\n";
    out += "# TYPE redcloud_peer_seconds_since_sync gauge\n";
    for (peer, at) in &shared.peers.lock().last_equal {
        out += &format!(
            "redcloud_peer_seconds_since_sync{{peer=\"{peer}\"}} {:.3}\n",
            at.elapsed().as_secs_f64()
        );
    }
    out
}

fn render_counters(shared: &Shared) -> String {
    let r = &shared.repair;
    let peers = shared.peers.lock().connected.len() as f64;
    let servers = shared.registry.lock().servers().count() as f64;
    shared.metrics.render(&[
        ("peers", "Connected controllers.", peers),
        (
            "chunkservers_known",
            "Chunkservers this controller has heard from.",
            servers,
        ),
        (
            "chunks_live",
            "Distinct chunks referenced by retained versions.",
            load(&r.total_chunks) as f64,
        ),
        (
            "chunks_under_replicated",
            "Live chunks below their replication target.",
            load(&r.under_replicated) as f64,
        ),
        (
            "chunks_lost",
            "Live chunks with no copy on a healthy chunkserver.",
            load(&r.lost) as f64,
        ),
        (
            "repair_queued",
            "Repair copies planned but not started.",
            load(&r.queued) as f64,
        ),
        (
            "repair_in_flight",
            "Repair copies running.",
            load(&r.in_flight) as f64,
        ),
        (
            "replication_dropped_commits",
            "Commits not queued for gossip (sent by sync instead).",
            shared.meta.dropped_commits() as f64,
        ),
    ])
}
