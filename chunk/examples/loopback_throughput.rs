//! Measures the chunk data path on loopback: a chunkserver on a RocksDB store in a temporary
//! directory, one client writing then reading `COUNT` chunks of `SIZE` bytes, one at a time.
//!
//! Run: `cargo run -p redcloud-chunk --example loopback_throughput [COUNT] [SIZE_KIB]`
//! (`TMPDIR` chooses the disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redcloud_chunk::client;
use redcloud_chunk::node::NodeIdentity;
use redcloud_chunk::scrub::ScrubConfig;
use redcloud_chunk::store::conformance::test_chunk;
use redcloud_chunk::{ChunkId, ChunkStore, Chunkserver, RocksOptions, RocksStore};
use redcloud_proto::transport::Transport;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(1024), |a| a.parse::<usize>())? * 1024;

    let dir = tempfile::tempdir()?;
    let store = Arc::new(RocksStore::open(dir.path(), RocksOptions::default())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let node = NodeIdentity {
        id: "cs-bench".into(),
        address: addr.clone(),
        zone: "z".into(),
    };
    let scrub = ScrubConfig {
        rate_bytes_per_sec: 0,
        ..ScrubConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Chunkserver::new(store, node, scrub).serve(listener, async {
        let _ = stopped.await;
    }));

    let chunks: Vec<(ChunkId, Bytes)> = (0..count)
        .map(|i| {
            let bytes = Bytes::from(test_chunk(i, size));
            (ChunkId::of(&bytes), bytes)
        })
        .collect();
    let total_mib = (count as f64 * size as f64) / (1024.0 * 1024.0);
    let mut client = client::connect(&addr, &Transport::plaintext()).await?;
    // The example serves an in-memory store without a gate: no credential needed.
    let none = tonic::metadata::MetadataMap::new();

    let started = Instant::now();
    for (id, bytes) in &chunks {
        client::write_chunk(&mut client, *id, bytes.clone(), &none).await?;
    }
    let write = started.elapsed();

    let started = Instant::now();
    for (id, bytes) in &chunks {
        let read = client::read_chunk(&mut client, *id, &none).await?;
        anyhow::ensure!(read == *bytes, "chunk {id} read back different bytes");
    }
    let read = started.elapsed();

    // Baseline: the same chunks straight into a second store, no gRPC.
    let raw_dir = tempfile::tempdir()?;
    let raw = RocksStore::open(raw_dir.path(), RocksOptions::default())?;
    let started = Instant::now();
    for (id, bytes) in &chunks {
        raw.put(id, bytes)?;
    }
    let raw_write = started.elapsed();
    let started = Instant::now();
    for (id, _) in &chunks {
        raw.get(id)?;
    }
    let raw_read = started.elapsed();

    let rate = |d: Duration| total_mib / d.as_secs_f64();
    let mib = size / 1024;
    println!("{count} chunks x {mib} KiB = {total_mib:.0} MiB, one stream, synced writes");
    println!(
        "gRPC write: {:7.1} MiB/s ({:.2} s)",
        rate(write),
        write.as_secs_f64()
    );
    println!(
        "gRPC read:  {:7.1} MiB/s ({:.2} s)",
        rate(read),
        read.as_secs_f64()
    );
    println!(
        "store alone, no gRPC: put {:.1} MiB/s, get {:.1} MiB/s",
        rate(raw_write),
        rate(raw_read)
    );
    drop(client);
    let _ = stop.send(());
    server.await??;
    Ok(())
}
