//! Durability under `kill -9`: every chunk whose put returned before the process died is
//! present and intact after reopening the store.
//!
//! The test binary re-executes itself as the writer: the ignored test `crash_child_writer`
//! does the writing when the environment names a directory.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redcloud_chunk::store::WRITE_ONCE_MIN;
use redcloud_chunk::store::conformance::test_chunk;
use redcloud_chunk::{ChunkId, ChunkStore, RocksOptions, RocksStore};

/// Set in the child's environment to the store directory.
const CHILD_ENV: &str = "REDCLOUD_CRASH_TEST_DIR";
/// Acknowledged writes the parent waits for before killing the child: the last lone chunk
/// before a batch, so the kill most likely lands while that batch is being written once.
const ACKS_BEFORE_KILL: usize = 30;
/// Most chunks the child writes (about 130 MB) if nobody kills it.
const CHILD_MAX_CHUNKS: u64 = 200;
const DEADLINE: Duration = Duration::from_secs(60);

/// Chunks written together in one `put_many`, for the groups [`in_batch`] names.
const BATCH: u64 = 6;
// A batch of 1 MiB chunks is past the write-once threshold.
const _: () = assert!(BATCH * (1 << 20) >= WRITE_ONCE_MIN);

/// Whether chunk `i` is written in a batch of [`BATCH`] 1 MiB chunks: every other group, so
/// the kill can land in a lone put (through the WAL) or in a batch written once (no WAL, a
/// flush before the info).
fn in_batch(i: u64) -> bool {
    (i / BATCH) % 2 == 1
}

/// Chunk number `i`: lone chunks vary across the blob-file threshold; batched ones are
/// 1 MiB, so a batch is past the write-once threshold.
fn chunk_bytes(i: u64) -> Vec<u8> {
    if in_batch(i) {
        test_chunk(i, 1 << 20)
    } else {
        test_chunk(i, 16 * 1024 + (i as usize % 8) * 70 * 1024)
    }
}

#[test]
#[ignore = "the writer half of acknowledged_chunks_survive_sigkill, which runs it"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} is not set: nothing to do outside the crash test");
        return;
    };
    let store = RocksStore::open(Path::new(&dir), RocksOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    let mut i = 0;
    while i < CHILD_MAX_CHUNKS {
        let n = if in_batch(i) { BATCH } else { 1 };
        let chunks: Vec<(ChunkId, Bytes)> = (i..i + n)
            .map(|j| {
                let bytes = chunk_bytes(j);
                (ChunkId::of(&bytes), Bytes::from(bytes))
            })
            .collect();
        if n == 1 {
            store.put(&chunks[0].0, &chunks[0].1).unwrap();
        } else {
            store.put_many(&chunks).unwrap();
        }
        // Printed only after the put returned: each line is an acknowledgement.
        for (j, (id, _)) in (i..).zip(&chunks) {
            writeln!(out, "ACK {j} {id}").unwrap();
        }
        out.flush().unwrap();
        i += n;
    }
}

#[test]
fn acknowledged_chunks_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(ack) = line.strip_prefix("ACK ") {
                let (i, id) = ack.split_once(' ').expect("ACK <i> <id>");
                let ack = (i.parse::<u64>().unwrap(), id.parse::<ChunkId>().unwrap());
                if tx.send(ack).is_err() {
                    break;
                }
            }
        }
    });

    let deadline = Instant::now() + DEADLINE;
    let mut acked = Vec::new();
    while acked.len() < ACKS_BEFORE_KILL {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ack) => acked.push(ack),
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "child stopped acknowledging after {} writes: {e}",
                    acked.len()
                );
            }
        }
    }
    // SIGKILL: no destructors, no flush, exactly like a power-cut of the process.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    reader.join().unwrap();
    // Acknowledgements printed before the kill but not yet read count too.
    acked.extend(rx.try_iter());

    let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
    for &(i, id) in &acked {
        assert_eq!(id, ChunkId::of(&chunk_bytes(i)));
        let bytes = store
            .get(&id)
            .unwrap_or_else(|e| panic!("acknowledged chunk {i} lost: {e}"));
        assert_eq!(bytes, chunk_bytes(i), "chunk {i}");
    }
    let stats = store.stats();
    assert!(
        stats.chunk_count >= acked.len() as u64,
        "{stats:?} vs {} acks",
        acked.len()
    );
    // The totals rebuilt on open agree with what is listed.
    let listed = store.list(None, usize::MAX).unwrap();
    assert_eq!(listed.len() as u64, stats.chunk_count);
    assert_eq!(
        listed.iter().map(|(_, size)| size).sum::<u64>(),
        stats.used_bytes
    );
    eprintln!("{} acknowledged chunks survived SIGKILL", acked.len());
}
