//! Messages between controllers. Gossip carries changes (or, when too large, an announcement
//! of new heads); requests carry the anti-entropy exchange: per-document digests, then
//! Automerge sync messages for the documents that differ.
//!
//! Everything is protobuf (prost) so a malformed message from a peer is a decode error, never
//! a panic, and fields can be added without breaking older controllers.

use prost::Message;

/// Pushed on the cluster topic after local commits: the changes of one document (fields 1-3,
/// which is all a message of an older controller holds) and of further documents (`more`),
/// so the commits one group commit made durable leave in one signed message (see
/// [`super::outbox`]).
#[derive(Clone, PartialEq, Message)]
pub struct Gossip {
    #[prost(string, tag = "1")]
    pub doc: String,
    /// Raw Automerge changes; empty for an announcement.
    #[prost(bytes = "vec", tag = "2")]
    pub changes: Vec<u8>,
    /// The document's heads after the change: receivers missing any of them pull by sync.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub heads: Vec<Vec<u8>>,
    /// The changes of further documents (or more of the same one), in commit order.
    #[prost(message, repeated, tag = "4")]
    pub more: Vec<DocChanges>,
}

/// One document's part of a [`Gossip`] message: the same three fields.
#[derive(Clone, PartialEq, Message)]
pub struct DocChanges {
    #[prost(string, tag = "1")]
    pub doc: String,
    /// Raw Automerge changes; empty for an announcement.
    #[prost(bytes = "vec", tag = "2")]
    pub changes: Vec<u8>,
    /// The document's heads after the changes.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub heads: Vec<Vec<u8>>,
}

/// One document's heads digest.
#[derive(Clone, PartialEq, Message)]
pub struct DocDigest {
    #[prost(string, tag = "1")]
    pub doc: String,
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
}

/// A request from one controller to another.
#[derive(Clone, PartialEq, Message)]
pub struct PeerRequest {
    #[prost(oneof = "Request", tags = "1, 2, 3, 4")]
    pub request: Option<Request>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    /// "Here is my total digest; if yours differs, send your per-document digests."
    #[prost(message, tag = "1")]
    Digests(Digests),
    /// One step of the Automerge sync protocol for one document.
    #[prost(message, tag = "2")]
    Sync(SyncStep),
    /// Changes the sender has and the receiver lacks, when a sync message would be too large.
    #[prost(message, tag = "3")]
    Changes(ChangeBatch),
    /// "Send me the changes you have beyond these heads", in bounded batches.
    #[prost(message, tag = "4")]
    Pull(Pull),
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, PartialEq, Message)]
pub struct PeerResponse {
    #[prost(oneof = "Response", tags = "1, 2, 3, 4, 5")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    #[prost(message, tag = "1")]
    Digests(Digests),
    #[prost(message, tag = "2")]
    Sync(SyncStep),
    /// The request was refused (malformed, unknown document, ...).
    #[prost(string, tag = "3")]
    Error(String),
    /// The answer to [`Request::Pull`].
    #[prost(message, tag = "4")]
    Changes(ChangeBatch),
    /// The changes of a [`Request::Changes`] were applied (durably).
    #[prost(message, tag = "5")]
    Applied(Applied),
}

#[derive(Clone, PartialEq, Message)]
pub struct Digests {
    /// Per-document digests; a request carries none, an answer carries them only when the
    /// totals differ.
    #[prost(message, repeated, tag = "1")]
    pub docs: Vec<DocDigest>,
    /// Digest of every document's heads: equal totals end the exchange in one small round trip.
    #[prost(bytes = "vec", tag = "2")]
    pub total: Vec<u8>,
    /// The sender's (corrected) wall clock: a witness for clock skew.
    #[prost(uint64, tag = "3")]
    pub wall_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SyncStep {
    #[prost(string, tag = "1")]
    pub doc: String,
    /// An encoded Automerge sync message; empty when the sender has nothing to say.
    #[prost(bytes = "vec", tag = "2")]
    pub message: Vec<u8>,
    /// Request: the first step for this document in a new session, so the receiver drops any
    /// in-flight state left by a lost message. Answer: unused.
    #[prost(bool, tag = "3")]
    pub reset: bool,
    /// Answer: the reply would exceed the message limit; pull the changes instead.
    #[prost(bool, tag = "4")]
    pub too_large: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChangeBatch {
    #[prost(string, tag = "1")]
    pub doc: String,
    /// Concatenated raw Automerge changes, in causal order.
    #[prost(bytes = "vec", tag = "2")]
    pub changes: Vec<u8>,
    /// Answer to a pull: more changes follow (pull again with `skip` advanced).
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// How many changes `changes` holds.
    #[prost(uint64, tag = "4")]
    pub count: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Pull {
    #[prost(string, tag = "1")]
    pub doc: String,
    /// The requester's heads (the same for every pull of one sequence).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub have: Vec<Vec<u8>>,
    /// Changes of the sequence already received.
    #[prost(uint64, tag = "3")]
    pub skip: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Applied {
    /// Changes still waiting for dependencies after applying.
    #[prost(uint64, tag = "1")]
    pub pending: u64,
}

/// Encodes any message to bytes.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// Decodes a message, with the error as text for logs and counters.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = PeerRequest {
            request: Some(Request::Sync(SyncStep {
                doc: "files/3".into(),
                message: vec![1, 2, 3],
                reset: true,
                too_large: false,
            })),
        };
        assert_eq!(decode::<PeerRequest>(&encode(&r)).expect("decodes"), r);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut x = 0x9e37_79b9_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            // Either outcome is fine; what matters is no panic.
            let _ = decode::<PeerRequest>(&bytes);
            let _ = decode::<Gossip>(&bytes);
        }
        assert!(decode::<Gossip>(&[0xff, 0xff, 0xff]).is_err());
    }
}
