//! `chunk_path`: upload and download of 1 MiB and 4 MiB chunks through the chunk client,
//! tonic and a chunkserver's RocksDB store, against three references measured in the same
//! run: writing the same bytes to files with `fdatasync` (the disk), BLAKE3 over them, and the
//! same client calls against an in-memory tonic service with no hashing ([`crate::echo`]).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use redcloud_chunk::ChunkId;
use redcloud_chunk::client::{self, ChunkClient};
use redcloud_proto::chunk::ReadChunkRequest;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::Profile;
use crate::results::{Report, Target, mib_s};

const BENCH: &str = "chunk_path";

/// A chunkserver on 127.0.0.1 in its own directory, stopped by dropping `stop`.
pub struct Server {
    pub addr: String,
    pub stop: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<()>>,
}

/// Starts a chunkserver in `dir` heartbeating `controllers` (none: standalone).
pub async fn start_chunkserver(
    dir: &std::path::Path,
    controllers: &[String],
    heartbeat: Duration,
) -> Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let mut config = redcloud_chunk::ChunkserverConfig::new(dir);
    config.listen = local;
    config.controllers = controllers.to_vec();
    config.heartbeat_interval = heartbeat;
    config.scrub_rate = 0;
    config.secret = Some(crate::cluster::bench_secret());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(redcloud_chunk::run(config, listener, async {
        let _ = rx.await;
    }));
    Ok(Server {
        addr: local.to_string(),
        stop,
        task,
    })
}

/// Connects, retrying while the server starts.
pub async fn connect(addr: &str) -> Result<ChunkClient> {
    let start = Instant::now();
    loop {
        match client::connect(addr, &crate::cluster::bench_transport()).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(20) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Reads a chunk's frames without checking its hash: the transport alone.
async fn read_raw(c: &mut ChunkClient, id: ChunkId) -> Result<usize> {
    let request = ReadChunkRequest {
        id: Bytes::copy_from_slice(id.as_bytes()),
        offset: 0,
        length: 0,
    };
    let mut frames = c.read_chunk(request).await?.into_inner();
    let mut n = 0;
    while let Some(f) = frames.message().await? {
        n += f.data.len();
    }
    Ok(n)
}

/// Runs `chunk_path`.
pub async fn run(report: &mut Report, profile: Profile) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_chunkserver(&dir.path().join("cs"), &[], Duration::from_secs(1)).await?;
    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?.to_string();
    let echo = crate::echo::serve(echo_listener);
    let mut store = connect(&server.addr).await?;
    let mut transport = connect(&echo_addr).await?;
    let disk_dir = dir.path().join("disk");
    std::fs::create_dir_all(&disk_dir)?;

    let mut seed = 1000u64;
    for (size, count) in [
        (1usize << 20, profile.pick(96, 4)),
        (4usize << 20, profile.pick(32, 2)),
    ] {
        let case = format!("{} MiB", size >> 20);
        let chunks: Vec<(ChunkId, Bytes)> = (0..count)
            .map(|_| {
                seed += 1;
                let b = Bytes::from(crate::data(size, seed));
                (ChunkId::of(&b), b)
            })
            .collect();
        let total = (size * count) as u64;

        // Disk: each chunk to its own file, fdatasync'd.
        let (dd, cs) = (disk_dir.clone(), chunks.clone());
        let disk = tokio::task::spawn_blocking(move || -> Result<Duration> {
            let start = Instant::now();
            for (id, bytes) in &cs {
                let mut f = std::fs::File::create(dd.join(id.to_hex()))?;
                f.write_all(bytes)?;
                f.sync_data()?;
            }
            Ok(start.elapsed())
        })
        .await??;

        // Durable upload through the client, tonic and RocksDB, with security on (the node
        // credential; a client's grant costs the same check).
        let cred =
            redcloud_proto::trust::Gate::new(Some(&crate::cluster::bench_secret())).node_metadata();
        let start = Instant::now();
        for (id, bytes) in &chunks {
            client::write_chunk(&mut store, *id, bytes.clone(), &cred).await?;
        }
        let upload = start.elapsed();

        // Warm download (every chunk read once before timing), verified by the client.
        for (id, _) in &chunks {
            client::read_chunk(&mut store, *id, &cred).await?;
        }
        let start = Instant::now();
        for (id, _) in &chunks {
            let b = client::read_chunk(&mut store, *id, &cred).await?;
            anyhow::ensure!(b.len() == size, "short read");
        }
        let download = start.elapsed();

        // BLAKE3 alone.
        let cs = chunks.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            for (id, bytes) in &cs {
                assert_eq!(ChunkId::of(bytes), *id);
            }
            start.elapsed()
        })
        .await?;

        // tonic alone: the same calls against the in-memory echo service.
        let start = Instant::now();
        for (id, bytes) in &chunks {
            client::write_chunk(&mut transport, *id, bytes.clone(), &cred).await?;
        }
        let tonic_up = start.elapsed();
        for (id, _) in &chunks {
            read_raw(&mut transport, *id).await?;
        }
        let start = Instant::now();
        for (id, _) in &chunks {
            let n = read_raw(&mut transport, *id).await?;
            anyhow::ensure!(n == size, "short echo read");
        }
        let tonic_down = start.elapsed();

        let down_ref = hash + tonic_down;
        report.info(
            BENCH,
            &case,
            "upload (durable)",
            mib_s(total, upload),
            "MiB/s",
        );
        report.info(
            BENCH,
            &case,
            "reference: disk write + fdatasync",
            mib_s(total, disk),
            "MiB/s",
        );
        report.figure(
            BENCH,
            &case,
            "upload / disk",
            disk.as_secs_f64() / upload.as_secs_f64(),
            "x",
            Some(Target::AtLeast(0.8)),
            "",
        );
        report.info(
            BENCH,
            &case,
            "download (warm, verified)",
            mib_s(total, download),
            "MiB/s",
        );
        report.info(
            BENCH,
            &case,
            "reference: BLAKE3",
            mib_s(total, hash),
            "MiB/s",
        );
        report.info(
            BENCH,
            &case,
            "reference: tonic read stream",
            mib_s(total, tonic_down),
            "MiB/s",
        );
        report.info(
            BENCH,
            &case,
            "reference: tonic write stream",
            mib_s(total, tonic_up),
            "MiB/s",
        );
        report.info(
            BENCH,
            &case,
            "reference: BLAKE3 + tonic read",
            mib_s(total, down_ref),
            "MiB/s",
        );
        report.figure(
            BENCH,
            &case,
            "download / (BLAKE3 + tonic)",
            down_ref.as_secs_f64() / download.as_secs_f64(),
            "x",
            Some(Target::AtLeast(0.8)),
            "",
        );
        for (id, _) in &chunks {
            let _ = std::fs::remove_file(disk_dir.join(id.to_hex()));
        }
    }
    let _ = server.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .context("chunkserver did not stop")?;
    echo.abort();
    Ok(())
}
