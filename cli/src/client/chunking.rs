//! Content-defined chunking of files (FastCDC, ~1 MiB average, 4 MiB maximum) with BLAKE3 per
//! chunk and for the whole file. Streaming: memory holds at most one chunk at a time, so any
//! file size works. Because cut points depend on content, an edit changes only the chunks
//! around it, and equal content yields equal chunks (stored once).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use fastcdc::v2020::StreamCDC;

pub const MIN_CHUNK: u32 = 256 << 10;
pub const AVG_CHUNK: u32 = 1 << 20;
pub const MAX_CHUNK: u32 = 4 << 20;

/// One chunk of a file: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub id: [u8; 32],
    pub offset: u64,
    pub len: u64,
}

/// A file's chunk list and whole-file hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunks {
    pub size: u64,
    pub blake3: [u8; 32],
    pub chunks: Vec<ChunkSpan>,
}

/// Chunks and hashes `path`, calling `progress` with the bytes processed so far.
pub fn chunk_file(path: &Path, progress: impl FnMut(u64)) -> Result<FileChunks> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reading = || format!("reading {}", path.display());
    if file.metadata().with_context(reading)?.len() <= u64::from(MIN_CHUNK) {
        // FastCDC never cuts below MIN_CHUNK, so a file this small is one chunk (none when
        // empty) whose id is the whole file's hash: one read and one hash, without the
        // chunker's MAX_CHUNK buffer (zeroing 4 MiB per file was most of a small file's cost).
        let mut data = Vec::new();
        (&mut file)
            .take(u64::from(MIN_CHUNK) + 1)
            .read_to_end(&mut data)
            .with_context(reading)?;
        if data.len() <= MIN_CHUNK as usize {
            return Ok(single_chunk(&data));
        }
        // The file grew meanwhile: chunk it as a large one.
        file.seek(SeekFrom::Start(0)).with_context(reading)?;
    }
    chunk_stream(file, path, progress)
}

/// A file of at most [`MIN_CHUNK`] bytes, held in memory.
fn single_chunk(data: &[u8]) -> FileChunks {
    let hash = *blake3::hash(data).as_bytes();
    let chunks = if data.is_empty() {
        Vec::new()
    } else {
        vec![ChunkSpan {
            id: hash,
            offset: 0,
            len: data.len() as u64,
        }]
    };
    FileChunks {
        size: data.len() as u64,
        blake3: hash,
        chunks,
    }
}

/// Content-defined chunking of a whole stream.
fn chunk_stream(file: File, path: &Path, mut progress: impl FnMut(u64)) -> Result<FileChunks> {
    let reader = BufReader::with_capacity(1 << 20, file);
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for chunk in StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let chunk = chunk.with_context(|| format!("reading {}", path.display()))?;
        whole.update(&chunk.data);
        chunks.push(ChunkSpan {
            id: *blake3::hash(&chunk.data).as_bytes(),
            offset: chunk.offset,
            len: chunk.length as u64,
        });
        size += chunk.length as u64;
        progress(size);
    }
    Ok(FileChunks {
        size,
        blake3: *whole.finalize().as_bytes(),
        chunks,
    })
}

/// Reads one chunk's bytes back from the file and checks they still hash to its id.
pub fn read_span(file: &File, span: &ChunkSpan, path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; span.len as usize];
    file.read_exact_at(&mut buf, span.offset)
        .with_context(|| format!("reading {}", path.display()))?;
    if blake3::hash(&buf).as_bytes() != &span.id {
        anyhow::bail!("{} changed while it was being uploaded", path.display());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn write(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(data).expect("write");
        f
    }

    #[test]
    fn chunks_cover_the_file_and_hash_it() {
        let data = pseudo_random(9 << 20, 7);
        let f = write(&data);
        let fc = chunk_file(f.path(), |_| {}).expect("chunk");
        assert_eq!(fc.size, data.len() as u64);
        assert_eq!(&fc.blake3, blake3::hash(&data).as_bytes());
        let mut next = 0;
        for c in &fc.chunks {
            assert_eq!(c.offset, next);
            assert!(c.len <= MAX_CHUNK as u64);
            let bytes = &data[c.offset as usize..(c.offset + c.len) as usize];
            assert_eq!(&c.id, blake3::hash(bytes).as_bytes());
            next += c.len;
        }
        assert_eq!(next, data.len() as u64);
        assert!(fc.chunks.len() > 2, "9 MiB gives several chunks");
    }

    #[test]
    fn an_edit_changes_only_nearby_chunks() {
        let data = pseudo_random(16 << 20, 11);
        let mut edited = data.clone();
        edited[8 << 20] ^= 0xff;
        let a = chunk_file(write(&data).path(), |_| {}).expect("chunk");
        let b = chunk_file(write(&edited).path(), |_| {}).expect("chunk");
        let ids_a: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.id).collect();
        let changed = b.chunks.iter().filter(|c| !ids_a.contains(&c.id)).count();
        assert!((1..=2).contains(&changed), "{changed} chunks changed");
    }

    #[test]
    fn small_files_chunk_exactly_as_the_chunker_would() {
        for len in [
            1,
            4096,
            MIN_CHUNK as usize - 1,
            MIN_CHUNK as usize,
            MIN_CHUNK as usize + 1,
        ] {
            let data = pseudo_random(len, len as u64);
            let f = write(&data);
            let fast = chunk_file(f.path(), |_| {}).expect("chunk");
            let file = File::open(f.path()).expect("open");
            let streamed = chunk_stream(file, f.path(), |_| {}).expect("chunk");
            assert_eq!(fast, streamed, "{len} bytes");
            assert_eq!(fast.size, len as u64);
        }
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let fc = chunk_file(write(&[]).path(), |_| {}).expect("chunk");
        assert_eq!(fc.size, 0);
        assert!(fc.chunks.is_empty());
        assert_eq!(&fc.blake3, blake3::hash(&[]).as_bytes());
    }
}
