//! The one place where chunkserver errors become gRPC statuses.
//!
//! Every message is one line that names the problem and, where there is one, the chunk id in
//! hex, so a client can print it as is.

use tonic::Status;

use crate::id::{ChunkId, IdError};
use crate::metrics::Rejection;
use crate::store::StoreError;

/// The status for a store error while working on `id` (`None` for whole-store operations).
pub fn store_status(err: StoreError, id: Option<&ChunkId>) -> Status {
    // Variants that carry the id already name it; prefix the others.
    let message = match (&err, id) {
        (StoreError::HashMismatch { .. } | StoreError::NotFound(_) | StoreError::Corrupt(_), _)
        | (_, None) => err.to_string(),
        (_, Some(id)) => format!("chunk {id}: {err}"),
    };
    match err {
        StoreError::HashMismatch { .. } | StoreError::TooLarge { .. } => {
            Status::invalid_argument(message)
        }
        StoreError::NotFound(_) => Status::not_found(message),
        StoreError::Corrupt(_) => Status::data_loss(message),
        StoreError::OutOfRange { .. } => Status::out_of_range(message),
        StoreError::DiskFull { .. } => Status::resource_exhausted(message),
        StoreError::Io(_) => Status::internal(message),
    }
}

/// The status for a malformed id in request field `field`.
pub fn id_status(field: &str, err: IdError) -> Status {
    Status::invalid_argument(format!("{field}: {err}"))
}

/// Reads a chunk id from request field `field`, or answers INVALID_ARGUMENT.
pub fn parse_id(field: &str, bytes: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_slice(bytes).map_err(|e| id_status(field, e))
}

/// Which refused-write counter a store error belongs to, if it is a refusal.
pub fn rejection_of(err: &StoreError) -> Option<Rejection> {
    match err {
        StoreError::HashMismatch { .. } => Some(Rejection::HashMismatch),
        StoreError::TooLarge { .. } => Some(Rejection::TooLarge),
        StoreError::DiskFull { .. } => Some(Rejection::DiskFull),
        _ => None,
    }
}

/// The status for a failed join of a blocking store task (a panic or a cancelled runtime).
pub fn join_status(err: tokio::task::JoinError) -> Status {
    Status::internal(format!("store task failed: {err}"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_code_and_names_the_chunk() {
        let id = ChunkId::of(b"a");
        let other = ChunkId::of(b"b");
        let cases = [
            (
                StoreError::HashMismatch {
                    expected: id,
                    actual: other,
                },
                Code::InvalidArgument,
            ),
            (
                StoreError::TooLarge { size: 9, max: 8 },
                Code::InvalidArgument,
            ),
            (StoreError::NotFound(id), Code::NotFound),
            (StoreError::Corrupt(id), Code::DataLoss),
            (
                StoreError::OutOfRange {
                    start: 5,
                    end: 9,
                    size: 4,
                },
                Code::OutOfRange,
            ),
            (
                StoreError::DiskFull {
                    needed: 10,
                    available: 2,
                },
                Code::ResourceExhausted,
            ),
            (StoreError::Io("boom".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = store_status(err.clone(), Some(&id));
            assert_eq!(status.code(), code, "{err}");
            assert!(
                status.message().contains(&id.to_string()),
                "{}",
                status.message()
            );
            assert_eq!(
                status.message().matches(&id.to_string()).count(),
                1,
                "{}",
                status.message()
            );
            assert!(!status.message().contains('\n'));
        }
        let mismatch = store_status(
            StoreError::HashMismatch {
                expected: id,
                actual: other,
            },
            None,
        );
        assert!(mismatch.message().contains(&other.to_string()));
    }

    #[test]
    fn malformed_ids_are_invalid_arguments_naming_the_field_and_length() {
        let status = parse_id("header.id", &[0; 31]).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("header.id"));
        assert!(status.message().contains("31 bytes"));
    }
}
