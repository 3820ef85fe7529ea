//! Asking chunkservers, not soft state, which chunks they hold: the proof behind a commit's
//! write quorum, a long upload's hold and a drain's completion.
//!
//! `HasChunks` with `touch` also refreshes each present chunk's stored-at time, so for the GC
//! grace period after the answer no controller can delete it (chunkservers refuse deletes of
//! younger chunks): a commit confirmed this way cannot race with a GC that planned before it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::directory::Target;
use crate::record::ChunkHash;

/// Deadline of one HasChunks call.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies confirmed per chunk (servers that answered yes), asking every server in `servers`
/// at once. A server that fails or times out confirms nothing.
pub async fn confirm_copies(
    dialer: &crate::chunk_client::Dialer,
    servers: &[Target],
    chunks: &[ChunkHash],
    touch: bool,
) -> HashMap<ChunkHash, Vec<String>> {
    let asks = servers.iter().map(|t| async move {
        let found = tokio::time::timeout(
            CONFIRM_TIMEOUT,
            has_chunks(dialer, &t.address, chunks, touch),
        )
        .await;
        match found {
            Ok(Ok(present)) => Some((t.id.clone(), present)),
            Ok(Err(e)) => {
                tracing::debug!(server = %t.id, error = %e, "HasChunks failed");
                None
            }
            Err(_) => {
                tracing::debug!(server = %t.id, "HasChunks timed out");
                None
            }
        }
    });
    let mut copies: HashMap<ChunkHash, Vec<String>> = HashMap::new();
    for (id, present) in futures::future::join_all(asks).await.into_iter().flatten() {
        for (c, yes) in chunks.iter().zip(present) {
            if yes {
                copies.entry(*c).or_default().push(id.clone());
            }
        }
    }
    copies
}

/// Asks one chunkserver which of `ids` it holds.
async fn has_chunks(
    dialer: &crate::chunk_client::Dialer,
    addr: &str,
    ids: &[ChunkHash],
    touch: bool,
) -> anyhow::Result<Vec<bool>> {
    let mut client = dialer.connect(addr).await?;
    let req = redcloud_proto::chunk::HasChunksRequest {
        ids: ids.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
        touch,
    };
    let present = client.has_chunks(req).await?.into_inner().present;
    if present.len() != ids.len() {
        anyhow::bail!("{addr} answered {} of {} chunks", present.len(), ids.len());
    }
    Ok(present)
}
