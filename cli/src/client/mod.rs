//! The client side of redcloud: controller failover, chunking, uploads and downloads.

pub mod bulk;
pub mod chunking;
pub mod connect;
pub mod download;
pub mod progress;
pub mod upload;

/// Wraps a request with the session's bearer token.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}
