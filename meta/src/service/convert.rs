//! Conversions between the metadata core's views and the wire types.

use bytes::Bytes;
use redcloud_proto::controller as pb;

use crate::files::{FileView, VersionView};
use crate::record::ChunkHash;

pub fn file_info(f: &FileView) -> pb::FileInfo {
    pb::FileInfo {
        name: f.name.clone(),
        size: f.head.size,
        tags: f.tags.clone(),
        version: f.head.vid.clone(),
        blake3: Bytes::copy_from_slice(&f.head.blake3),
        modified_ms: f.head.created.wall_ms(),
        hlc: f.head.created.0,
    }
}

pub fn version_info(v: &VersionView) -> pb::VersionInfo {
    pb::VersionInfo {
        version: v.vid.clone(),
        size: v.size,
        created_ms: v.created.wall_ms(),
        deleted: v.deleted,
        origin: v.origin.clone(),
        head: v.is_head,
        blake3: Bytes::copy_from_slice(&v.blake3),
        hlc: v.created.0,
        restored_from: v.restored_from.clone().unwrap_or_default(),
    }
}

/// A 32-byte chunk id from the wire, or an error naming the field.
pub fn chunk_hash(bytes: &[u8], field: &str) -> Result<ChunkHash, tonic::Status> {
    bytes.try_into().map_err(|_| {
        super::errors::invalid(
            field,
            format!("chunk id must be 32 bytes, got {}", bytes.len()),
        )
    })
}
