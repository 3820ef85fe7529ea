//! Connections to chunkservers, one per address, shared by every transfer of a command.

use std::collections::HashMap;
use std::sync::Arc;

use redcloud_chunk::client::{self, ChunkClient, ClientError};
use redcloud_proto::transport::Transport;
use tokio::sync::Mutex;

#[derive(Debug, Clone)]
pub struct ChunkPool {
    clients: Arc<Mutex<HashMap<String, ChunkClient>>>,
    transport: Transport,
}

impl ChunkPool {
    /// An empty pool that dials over `transport`.
    pub fn new(transport: Transport) -> ChunkPool {
        ChunkPool {
            clients: Arc::default(),
            transport,
        }
    }

    /// A client for `addr`, connecting on first use.
    pub async fn get(&self, addr: &str) -> Result<ChunkClient, ClientError> {
        if let Some(c) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let c = client::connect(addr, &self.transport).await?;
        self.clients.lock().await.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Drops a connection that failed, so the next use reconnects.
    pub async fn forget(&self, addr: &str) {
        self.clients.lock().await.remove(addr);
    }
}
