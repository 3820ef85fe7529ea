//! The scalar values stored in documents, and their byte encodings.
//!
//! Records are protobuf messages (prost), so a field added later is skipped by older
//! controllers instead of breaking them. A value that does not decode is an error (a hostile
//! or buggy peer wrote it), never a panic.

use std::collections::BTreeMap;

use prost::Message;

use crate::hlc::Timestamp;
use crate::vv::VersionVector;

/// A chunk's id: the BLAKE3 hash of its bytes.
pub type ChunkHash = [u8; 32];

/// One chunk of a file version, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub hash: ChunkHash,
    pub len: u64,
}

/// One version of a file (a tombstone when `deleted`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub size: u64,
    pub blake3: [u8; 32],
    pub chunks: Vec<ChunkRef>,
    pub created: Timestamp,
    pub vv: VersionVector,
    pub origin: String,
    pub deleted: bool,
    pub restored_from: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct VersionProto {
    #[prost(uint64, tag = "1")]
    size: u64,
    #[prost(bytes = "vec", tag = "2")]
    blake3: Vec<u8>,
    /// Packed chunk list: per chunk 32 hash bytes then the length as LEB128.
    #[prost(bytes = "vec", tag = "3")]
    chunks: Vec<u8>,
    #[prost(uint64, tag = "4")]
    created: u64,
    #[prost(btree_map = "string, uint64", tag = "5")]
    vv: BTreeMap<String, u64>,
    #[prost(string, tag = "6")]
    origin: String,
    #[prost(bool, tag = "7")]
    deleted: bool,
    #[prost(string, optional, tag = "8")]
    restored_from: Option<String>,
}

impl VersionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut chunks = Vec::with_capacity(self.chunks.len() * 36);
        for c in &self.chunks {
            chunks.extend_from_slice(&c.hash);
            prost::encoding::encode_varint(c.len, &mut chunks);
        }
        VersionProto {
            size: self.size,
            blake3: self.blake3.to_vec(),
            chunks,
            created: self.created.0,
            vv: self.vv.clone().into(),
            origin: self.origin.clone(),
            deleted: self.deleted,
            restored_from: self.restored_from.clone(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let p = VersionProto::decode(bytes).map_err(|e| e.to_string())?;
        let blake3: [u8; 32] = p
            .blake3
            .as_slice()
            .try_into()
            .map_err(|_| format!("blake3 is {} bytes, not 32", p.blake3.len()))?;
        let mut chunks = Vec::new();
        let mut rest = p.chunks.as_slice();
        while !rest.is_empty() {
            if rest.len() < 32 {
                return Err("truncated chunk list".into());
            }
            let (hash, tail) = rest.split_at(32);
            let mut tail = tail;
            let len = prost::encoding::decode_varint(&mut tail)
                .map_err(|e| format!("chunk length: {e}"))?;
            chunks.push(ChunkRef {
                hash: hash.try_into().expect("split_at(32)"),
                len,
            });
            rest = tail;
        }
        Ok(VersionRecord {
            size: p.size,
            blake3,
            chunks,
            created: Timestamp(p.created),
            vv: VersionVector::from(p.vv),
            origin: p.origin,
            deleted: p.deleted,
            restored_from: p.restored_from,
        })
    }
}

/// A registered user.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    /// Argon2id hash in PHC string format.
    #[prost(string, tag = "1")]
    pub phc: String,
    #[prost(uint64, tag = "2")]
    pub created: u64,
    #[prost(string, tag = "3")]
    pub origin: String,
}

/// A controller as it announced itself.
#[derive(Clone, PartialEq, Message)]
pub struct ControllerRecord {
    #[prost(string, tag = "1")]
    pub grpc_addr: String,
    #[prost(string, repeated, tag = "2")]
    pub p2p_addrs: Vec<String>,
    /// HLC timestamp of the first announcement.
    #[prost(uint64, tag = "3")]
    pub first_seen: u64,
}

/// Administrative state of a chunkserver (not liveness, which is soft state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkserverState {
    Active,
    Draining,
    Removed,
}

impl ChunkserverState {
    /// The name stored in the cluster document (and shown by `status`).
    pub fn name(self) -> &'static str {
        match self {
            ChunkserverState::Active => "active",
            ChunkserverState::Draining => "draining",
            ChunkserverState::Removed => "removed",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "active" => Ok(ChunkserverState::Active),
            "draining" => Ok(ChunkserverState::Draining),
            "removed" => Ok(ChunkserverState::Removed),
            other => Err(format!("unknown chunkserver state {other:?}")),
        }
    }
}

/// Where a chunkserver is: its address and zone. Its administrative state is a separate key,
/// so a heartbeat that records a new address never overwrites a concurrent drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkserverRecord {
    pub address: String,
    pub zone: String,
}

#[derive(Clone, PartialEq, Message)]
struct ChunkserverProto {
    #[prost(string, tag = "1")]
    address: String,
    #[prost(string, tag = "2")]
    zone: String,
}

impl ChunkserverRecord {
    pub fn encode(&self) -> Vec<u8> {
        ChunkserverProto {
            address: self.address.clone(),
            zone: self.zone.clone(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let p = ChunkserverProto::decode(bytes).map_err(|e| e.to_string())?;
        Ok(ChunkserverRecord {
            address: p.address,
            zone: p.zone,
        })
    }
}

/// Decode a prost record, mapping the error to a string.
pub(crate) fn decode_msg<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn version_record_round_trips(
            size in any::<u64>(),
            lens in proptest::collection::vec(any::<u64>(), 0..5),
            created in any::<u64>(),
            deleted in any::<bool>(),
            restored in proptest::option::of("[a-f0-9]{4}"),
        ) {
            let mut vv = VersionVector::new();
            vv.increment("n1");
            let rec = VersionRecord {
                size,
                blake3: [7; 32],
                chunks: lens.iter().enumerate().map(|(i, &len)| ChunkRef { hash: [i as u8; 32], len }).collect(),
                created: Timestamp(created),
                vv,
                origin: "n1".into(),
                deleted,
                restored_from: restored,
            };
            prop_assert_eq!(VersionRecord::decode(&rec.encode()).unwrap(), rec);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = VersionRecord::decode(&bytes);
            let _ = ChunkserverRecord::decode(&bytes);
            let _ = decode_msg::<UserRecord>(&bytes);
        }
    }

    #[test]
    fn bad_blake3_length_is_an_error() {
        let bytes = VersionProto {
            blake3: vec![1, 2, 3],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(
            VersionRecord::decode(&bytes)
                .unwrap_err()
                .contains("not 32")
        );
    }
}
