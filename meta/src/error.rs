//! The metadata core's error type.

use crate::hlc::ClockError;
use crate::storage::StorageError;

/// Everything an operation of the metadata core can fail with. Every message names what was
/// wrong, so the service can hand it to the user as is.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetaError {
    /// Input failed validation; nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A client's causal context (`after`) or another clock value was refused.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A stored document could not be loaded.
    #[error("stored document {doc} is corrupt: {reason}")]
    CorruptDocument { doc: String, reason: String },
    /// A value inside a document could not be decoded (written by a buggy or hostile peer).
    #[error("record {key:?} in document {doc} is corrupt: {reason}")]
    CorruptRecord {
        doc: String,
        key: String,
        reason: String,
    },
    /// Replicated change bytes could not be parsed or applied.
    #[error("malformed changes for document {doc}: {reason}")]
    MalformedChanges { doc: String, reason: String },
    #[error("malformed sync message for document {doc}: {reason}")]
    MalformedSyncMessage { doc: String, reason: String },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("unknown document {0:?}")]
    UnknownDocument(String),
    #[error("this data directory belongs to node {stored:?}, but the node id given is {given:?}")]
    NodeMismatch { stored: String, given: String },
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Automerge refused an operation on our own document: a bug, not bad input.
    #[error("internal document error in {doc}: {reason}")]
    Internal { doc: String, reason: String },
}

impl MetaError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        MetaError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
