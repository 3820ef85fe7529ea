//! Every gRPC connection of the cluster is built here: the CLI's to controllers and
//! chunkservers, the controllers' to chunkservers, the chunkservers' to controllers
//! (heartbeats) and to each other (ReplicateChunk), and both servers. One place sets the
//! timeouts, keepalives, HTTP/2 windows and frame sizes, and TLS ([`crate::tls`]), so no
//! client and server disagree on them.

use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};

use crate::tls::{SERVER_NAME, ServerIdentity};
use crate::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, STREAM_WINDOW};

/// How long to wait for a connection, TLS handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Default deadline of one call until its response starts (callers may set a shorter one).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server waits for a client to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 frame size both ends accept.
pub const MAX_H2_FRAME: u32 = 1 << 20;

/// How a client dials: plaintext (only for nodes started `--insecure`) or TLS verified
/// against a CA.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    tls: Option<ClientTlsConfig>,
}

impl Transport {
    /// Plaintext: only for a cluster started `--insecure`.
    pub fn plaintext() -> Transport {
        Transport { tls: None }
    }

    /// TLS, verifying servers against the CA in `ca_pem` and the name [`SERVER_NAME`].
    pub fn tls(ca_pem: &[u8]) -> Transport {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(SERVER_NAME)
            .timeout(CONNECT_TIMEOUT);
        Transport { tls: Some(config) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for `addr` (`host:port`, or a URI whose scheme is replaced by this
    /// transport's) with the shared limits. It connects lazily or on `connect()`.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let host = addr.rsplit("://").next().unwrap_or(addr);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_H2_FRAME);
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }
}

/// The connections a server accepts on `listener`, with the socket options every server
/// needs: `TCP_NODELAY` and TCP keepalives. (The builder's `tcp_nodelay` and `tcp_keepalive`
/// only apply to listeners the builder binds itself; without `TCP_NODELAY` on accepted
/// sockets a small response written in two pieces waits for the client's delayed ACK,
/// about 40 ms a call.)
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL))
}

/// A server builder with the shared limits, serving TLS with `identity` (plaintext without
/// one), for connections from [`incoming`]. Callers add their own request timeout and
/// concurrency limits.
pub fn server(identity: Option<&ServerIdentity>) -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
        .tcp_nodelay(true)
        .max_concurrent_streams(crate::MAX_STREAMS_PER_CONNECTION)
        .max_frame_size(MAX_H2_FRAME);
    match identity {
        Some(id) => builder.tls_config(
            ServerTlsConfig::new()
                .identity(id.to_tonic())
                .timeout(HANDSHAKE_TIMEOUT),
        ),
        None => Ok(builder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections must not wait on Nagle: before, the controller served from a
    /// plain listener stream and every metadata call paid the client's delayed ACK (~40 ms).
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let socket = accepted.next().await.unwrap().unwrap();
        assert!(socket.nodelay().unwrap(), "TCP_NODELAY is off");
    }

    #[test]
    fn endpoints_take_host_port_or_uris_with_the_transports_scheme() {
        let plain = Transport::plaintext();
        let uri = |t: &Transport, a: &str| t.endpoint(a).unwrap().uri().to_string();
        assert_eq!(uri(&plain, "127.0.0.1:7000"), "http://127.0.0.1:7000/");
        // A scheme in the address never overrides the transport: no silent plaintext.
        assert_eq!(uri(&plain, "https://cs1:7000"), "http://cs1:7000/");
        let secret = crate::trust::ClusterSecret::from_bytes([3; 32]);
        let ca = crate::tls::ClusterCa::from_secret(&secret).unwrap();
        let tls = Transport::tls(ca.cert_pem().as_bytes());
        assert!(tls.is_tls() && !plain.is_tls());
        assert_eq!(uri(&tls, "http://cs1:7000"), "https://cs1:7000/");
        assert!(plain.endpoint("not a uri").is_err());
    }
}
