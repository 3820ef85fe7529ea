//! The `info` record the RocksDB store keeps beside each chunk: size, write time and last
//! verification time, as three little-endian u64s (24 bytes).

use super::{ChunkInfo, StoreError};
use crate::id::ChunkId;

const INFO_LEN: usize = 24;

/// The 24-byte record for `info`.
pub fn encode_info(info: &ChunkInfo) -> [u8; INFO_LEN] {
    let mut out = [0u8; INFO_LEN];
    out[..8].copy_from_slice(&info.size.to_le_bytes());
    out[8..16].copy_from_slice(&info.stored_at_ms.to_le_bytes());
    out[16..].copy_from_slice(&info.last_verified_ms.to_le_bytes());
    out
}

/// Reads a record; a record of the wrong length is a storage error naming the chunk.
pub fn decode_info(id: &ChunkId, value: &[u8]) -> Result<ChunkInfo, StoreError> {
    let value: &[u8; INFO_LEN] = value
        .try_into()
        .map_err(|_| StoreError::Io(format!("chunk {id}: info record of {} bytes", value.len())))?;
    let field = |i: usize| u64::from_le_bytes(value[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(ChunkInfo {
        size: field(0),
        stored_at_ms: field(1),
        last_verified_ms: field(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_rejects_wrong_lengths() {
        let id = ChunkId::of(b"x");
        let info = ChunkInfo {
            size: 8 << 20,
            stored_at_ms: 1_700_000_000_000,
            last_verified_ms: u64::MAX,
        };
        assert_eq!(decode_info(&id, &encode_info(&info)).unwrap(), info);
        assert!(decode_info(&id, &[0; 23]).is_err());
    }
}
