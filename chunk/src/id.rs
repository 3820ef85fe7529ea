//! Chunk identity: a chunk is named by the BLAKE3 hash of its bytes.

use std::fmt;
use std::str::FromStr;

/// Length in bytes of a chunk id on the wire.
pub const ID_LEN: usize = 32;

/// The BLAKE3 hash of a chunk's bytes: 32 bytes on the wire, 64 lower-case hex digits in text.
///
/// Ids order bytewise, which is the order `ListChunks` and the stores use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; ID_LEN]);

/// Why some bytes or text are not a chunk id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id had the wrong number of bytes.
    #[error("malformed chunk id: {len} bytes, expected {ID_LEN}")]
    WrongLength {
        /// Bytes received.
        len: usize,
    },
    /// The text was not 64 hex digits.
    #[error("malformed chunk id {text:?}: expected {} hex digits", ID_LEN * 2)]
    BadHex {
        /// The offending text (cut to a readable length).
        text: String,
    },
}

impl ChunkId {
    /// The id of `bytes`: their BLAKE3 hash.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Reads an id from its 32 wire bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        <[u8; ID_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdError::WrongLength { len: bytes.len() })
    }

    /// The 32 wire bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Lower-case hex, as printed by `Display`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        let mut id = [0u8; ID_LEN];
        hex::decode_to_slice(text, &mut id).map_err(|_| IdError::BadHex {
            text: text.chars().take(80).collect(),
        })?;
        Ok(Self(id))
    }
}

impl AsRef<[u8]> for ChunkId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_the_blake3_hash_of_the_bytes() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.0, *blake3::hash(b"hello").as_bytes());
        assert_ne!(id, ChunkId::of(b"hellO"));
    }

    #[test]
    fn hex_round_trips_and_is_lower_case() {
        let id = ChunkId::of(b"round trip");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ChunkId>().unwrap(), id);
    }

    #[test]
    fn from_slice_rejects_wrong_lengths_with_the_length() {
        let err = ChunkId::from_slice(&[0u8; 31]).unwrap_err();
        assert_eq!(err, IdError::WrongLength { len: 31 });
        assert!(err.to_string().contains("31 bytes"), "{err}");
        assert!(ChunkId::from_slice(&[]).is_err());
        assert!(ChunkId::from_slice(&[0u8; 33]).is_err());
        assert_eq!(ChunkId::from_slice(&[7u8; 32]).unwrap(), ChunkId([7u8; 32]));
    }

    #[test]
    fn from_str_rejects_bad_text() {
        for bad in ["", "zz", &"a".repeat(63), &"a".repeat(65), &"g".repeat(64)] {
            assert!(bad.parse::<ChunkId>().is_err(), "{bad:?} parsed");
        }
    }
}
