//! The one place metadata errors become gRPC statuses. Every status carries a one-line message
//! that names what was wrong.

use tonic::Status;

use crate::auth::AuthError;
use crate::error::MetaError;
use crate::handle::Stopped;

/// Maps a metadata error to the status a client sees.
pub fn status(e: MetaError) -> Status {
    match &e {
        MetaError::InvalidArgument { .. } | MetaError::TooLarge { .. } | MetaError::Clock(_) => {
            Status::invalid_argument(e.to_string())
        }
        MetaError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        MetaError::NotFound(_) => Status::not_found(e.to_string()),
        MetaError::MalformedChanges { .. } | MetaError::MalformedSyncMessage { .. } => {
            Status::invalid_argument(e.to_string())
        }
        MetaError::UnknownDocument(_) => Status::not_found(e.to_string()),
        MetaError::Storage(_) => Status::unavailable(format!("metadata storage failed: {e}")),
        _ => Status::internal(e.to_string()),
    }
}

pub fn auth(e: AuthError) -> Status {
    Status::unauthenticated(e.to_string())
}

pub fn stopped(_: Stopped) -> Status {
    Status::unavailable("controller is shutting down")
}

/// An INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}
