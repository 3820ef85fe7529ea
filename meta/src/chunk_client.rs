//! The controller's side of the chunkserver protocol: confirm uploads (HasChunks), order
//! copies (ReplicateChunk), collect garbage (DeleteChunk) and pull inventories (ListChunks).
//! The controller talks to chunkservers only through the wire protocol, not their crate.

use redcloud_proto::chunk::chunk_service_client::ChunkServiceClient;
use redcloud_proto::transport::Transport;
use redcloud_proto::trust::{Credential, Gate};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Client = ChunkServiceClient<InterceptedService<Channel, Credential>>;

/// How this controller reaches chunkservers: over its transport (TLS verified against the
/// cluster CA), every call carrying the node credential.
#[derive(Debug, Clone)]
pub struct Dialer {
    gate: Gate,
    transport: Transport,
}

impl Dialer {
    pub fn new(gate: Gate, transport: Transport) -> Dialer {
        Dialer { gate, transport }
    }

    /// Connects to the chunkserver at `addr` (`host:port`) with the shared limits.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<Client> {
        let channel = self.transport.endpoint(addr)?.connect().await?;
        let credential = Credential(self.gate.node_metadata());
        Ok(ChunkServiceClient::with_interceptor(channel, credential)
            .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE))
    }
}
