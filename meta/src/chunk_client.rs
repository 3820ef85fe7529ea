//! The controller's side of the chunkserver protocol: confirm uploads (HasChunks), order
//! copies (ReplicateChunk), collect garbage (DeleteChunk) and pull inventories (ListChunks).
//! The controller talks to chunkservers only through the wire protocol, not their crate.

use std::time::Duration;

use redcloud_proto::chunk::chunk_service_client::ChunkServiceClient;
use redcloud_proto::trust::{Credential, Gate};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a chunkserver to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub type Client = ChunkServiceClient<InterceptedService<Channel, Credential>>;

/// Connects to a chunkserver at `addr` (`host:port`) with the shared limits and windows; every
/// call carries `gate`'s node credential.
pub async fn connect(addr: &str, gate: &Gate) -> anyhow::Result<Client> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(redcloud_proto::STREAM_WINDOW)
        .initial_connection_window_size(redcloud_proto::CONNECTION_WINDOW)
        .connect()
        .await?;
    let credential = Credential(gate.node_metadata());
    Ok(ChunkServiceClient::with_interceptor(channel, credential)
        .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE))
}
