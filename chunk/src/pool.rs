//! Connections to chunkservers, one per address, shared by every transfer that goes there.
//!
//! A chunk transfer over a kept connection costs its round trips; a new connection costs a TCP
//! and TLS handshake first, which for a small chunk is most of the time. The CLI keeps one pool
//! per command (its uploads and downloads), a chunkserver one for its life (the sources it
//! pulls repair copies from). HTTP/2 multiplexes the calls that share a connection. A caller
//! that sees a transfer fail [`forget`](ChunkPool::forget)s the address, so the next use
//! dials again instead of reusing a broken connection.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use redcloud_proto::transport::Transport;

use crate::client::{self, ChunkClient, ClientError};

/// Most connections one pool keeps open; past it an arbitrary one is dropped (and dialed again
/// when next needed).
pub const MAX_POOLED: usize = 1_024;

/// Kept connections to chunkservers, keyed by address. Cloning shares the pool.
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

    /// A client for `addr` on the kept connection, dialing first if there is none. Concurrent
    /// first uses may each dial; one connection is kept, the others serve their one caller.
    pub async fn get(&self, addr: &str) -> Result<ChunkClient, ClientError> {
        if let Some(c) = self.clients.lock().get(addr) {
            return Ok(c.clone());
        }
        let c = client::connect(addr, &self.transport).await?;
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_POOLED
            && !clients.contains_key(addr)
            && let Some(evict) = clients.keys().next().cloned()
        {
            clients.remove(&evict);
        }
        Ok(clients.entry(addr.to_owned()).or_insert(c).clone())
    }

    /// Drops the connection to `addr` after a failure, so the next use dials again.
    pub fn forget(&self, addr: &str) {
        self.clients.lock().remove(addr);
    }

    /// Connections kept now.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_connection_per_address_until_forgotten() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        let pool = ChunkPool::new(Transport::plaintext());
        for _ in 0..5 {
            pool.get(&addr).await.unwrap();
        }
        assert_eq!(pool.len(), 1);
        pool.forget(&addr);
        assert!(pool.is_empty());
        pool.get(&addr).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        server.abort();
    }
}
