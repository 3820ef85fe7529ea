//! Connections to chunkservers, one per address, shared by every transfer of a command.

use std::collections::HashMap;
use std::sync::Arc;

use redcloud_chunk::client::{self, ChunkClient, ClientError};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Default)]
pub struct ChunkPool {
    clients: Arc<Mutex<HashMap<String, ChunkClient>>>,
}

impl ChunkPool {
    /// A client for `addr`, connecting on first use.
    pub async fn get(&self, addr: &str) -> Result<ChunkClient, ClientError> {
        if let Some(c) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let c = client::connect(addr).await?;
        self.clients.lock().await.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Drops a connection that failed, so the next use reconnects.
    pub async fn forget(&self, addr: &str) {
        self.clients.lock().await.remove(addr);
    }
}
