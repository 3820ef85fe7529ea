//! The controller's side of the chunkserver protocol: confirm uploads (HasChunks), order
//! copies (ReplicateChunk), collect garbage (DeleteChunk) and pull inventories (ListChunks).
//! The controller talks to chunkservers only through the wire protocol, not their crate.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use redcloud_proto::chunk::chunk_service_client::ChunkServiceClient;
use redcloud_proto::transport::Transport;
use redcloud_proto::trust::{Credential, Gate};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Client = ChunkServiceClient<InterceptedService<Channel, Credential>>;

/// Most chunkserver connections kept open; past it an arbitrary one is dropped (and redialed
/// when next needed).
const MAX_CONNECTIONS: usize = 4096;

/// How this controller reaches chunkservers: over its transport (TLS verified against the
/// cluster CA), every call carrying the node credential. One connection per chunkserver is
/// kept and shared by every call (HTTP/2 multiplexes them), so confirming an upload, ordering
/// a copy or deleting a chunk costs a round trip, not a TCP and TLS handshake. A connection
/// that breaks is re-established by the channel on its next call.
#[derive(Debug, Clone)]
pub struct Dialer {
    gate: Gate,
    transport: Transport,
    connections: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Dialer {
    pub fn new(gate: Gate, transport: Transport) -> Dialer {
        Dialer {
            gate,
            transport,
            connections: Arc::default(),
        }
    }

    /// A client for the chunkserver at `addr` (`host:port`) with the shared limits, on the
    /// kept connection, dialing it first if there is none.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<Client> {
        let kept = self.connections.lock().get(addr).cloned();
        let channel = match kept {
            Some(channel) => channel,
            None => {
                let channel = self.transport.endpoint(addr)?.connect().await?;
                let mut connections = self.connections.lock();
                if connections.len() >= MAX_CONNECTIONS
                    && let Some(evict) = connections.keys().next().cloned()
                {
                    connections.remove(&evict);
                }
                connections
                    .entry(addr.to_owned())
                    .or_insert(channel)
                    .clone()
            }
        };
        let credential = Credential(self.gate.node_metadata());
        Ok(ChunkServiceClient::with_interceptor(channel, credential)
            .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE))
    }

    /// Chunkserver connections kept open now.
    pub fn connections(&self) -> usize {
        self.connections.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_connection_per_chunkserver_is_kept_and_shared() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Counts the TCP connections the chunkserver side accepts.
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        let dialer = Dialer::new(Gate::new(None), Transport::plaintext());
        for _ in 0..5 {
            dialer.connect(&addr).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(dialer.connections(), 1);
        server.abort();
    }
}
