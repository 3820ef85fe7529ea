//! The request-response wire format: a 4-byte big-endian length, then that many raw bytes.
//! Requests and responses are opaque `Vec<u8>`, each capped at the configured limit on both the
//! sending and the receiving side. A frame that claims more than the limit is refused before
//! anything is read, and memory grows only as bytes actually arrive, so a lying peer cannot make
//! us allocate the claimed size.

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use crate::metrics::{self, Metrics};

/// Bytes read per step while receiving a frame (the buffer grows as data arrives).
const READ_CHUNK: usize = 64 * 1024;

/// A frame exceeded the size limit; carried inside the `io::Error` so metrics can tell
/// oversize apart from other stream failures.
#[derive(Debug, thiserror::Error)]
#[error("frame of {size} bytes exceeds the {limit}-byte limit")]
pub struct FrameTooLarge {
    pub size: u64,
    pub limit: usize,
}

/// Whether an error from this codec is an oversize refusal.
pub fn is_too_large(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<FrameTooLarge>())
}

/// Length-prefixed raw-bytes codec with a size cap.
#[derive(Debug, Clone)]
pub struct BytesCodec {
    max_size: usize,
    /// Counts refused frames: request-response reports no event when reading a request fails.
    metrics: Arc<Metrics>,
}

impl BytesCodec {
    pub fn new(max_size: usize, metrics: Arc<Metrics>) -> Self {
        BytesCodec { max_size, metrics }
    }

    async fn read_frame<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u64::from(u32::from_be_bytes(len));
        if len > self.max_size as u64 {
            metrics::inc(&self.metrics.rejected_oversize);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameTooLarge {
                    size: len,
                    limit: self.max_size,
                },
            ));
        }
        let mut buf = Vec::with_capacity((len as usize).min(READ_CHUNK));
        io.take(len).read_to_end(&mut buf).await?;
        if buf.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated frame",
            ));
        }
        Ok(buf)
    }

    async fn write_frame<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()> {
        if data.len() > self.max_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                FrameTooLarge {
                    size: data.len() as u64,
                    limit: self.max_size,
                },
            ));
        }
        let len = u32::try_from(data.len()).expect("max_size is validated to fit in u32");
        io.write_all(&len.to_be_bytes()).await?;
        // The request-response handler closes the stream after this returns.
        io.write_all(&data).await
    }
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn round_trip() {
        let codec = BytesCodec::new(1024, Arc::default());
        let mut wire = Cursor::new(Vec::new());
        codec
            .write_frame(&mut wire, b"hello".to_vec())
            .await
            .unwrap();
        let mut wire = Cursor::new(wire.into_inner());
        assert_eq!(codec.read_frame(&mut wire).await.unwrap(), b"hello");
        let mut empty = Cursor::new(frame(0, b""));
        assert_eq!(codec.read_frame(&mut empty).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn oversize_claim_is_refused_before_reading() {
        let codec = BytesCodec::new(1024, Arc::default());
        // Claims 4 GiB but carries 3 bytes: refused from the header alone.
        let err = codec
            .read_frame(&mut Cursor::new(frame(u32::MAX, b"abc")))
            .await
            .unwrap_err();
        assert!(is_too_large(&err), "{err}");
        assert_eq!(codec.metrics.snapshot().rejected_oversize, 1);
        let err = codec
            .write_frame(&mut Cursor::new(Vec::new()), vec![0; 1025])
            .await;
        assert!(is_too_large(&err.unwrap_err()));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let codec = BytesCodec::new(1024, Arc::default());
        let err = codec
            .read_frame(&mut Cursor::new(frame(10, b"abc")))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!is_too_large(&err));
        let err = codec
            .read_frame(&mut Cursor::new(vec![0, 0]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
