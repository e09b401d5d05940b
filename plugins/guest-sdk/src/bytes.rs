//! Reading the byte streams the host hands to a driver (`hyperplane:driver/transfer`), such as a
//! template's image in `pull-template`.
//!
//! [`ByteReader`] abstracts a `byte-source` so that driver logic reading one can be unit-tested
//! natively against [`MemoryBytes`]; inside a component the host's `transfer::ByteSource`
//! implements it. [`read_to_end`] drains a reader chunk by chunk and checks its length.

use std::sync::Mutex;

use crate::transfer::ByteSource;

/// The size of the chunks [`read_to_end`] asks for (the host serves at most 1 MiB per read).
pub const READ_CHUNK_BYTES: u32 = 1024 * 1024;

/// The operations of `transfer.byte-source`, with the host's semantics.
pub trait ByteReader {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// Up to `max` bytes; an empty vector at the end.
    fn read(&self, max: u32) -> Result<Vec<u8>, String>;
}

impl ByteReader for ByteSource {
    fn size(&self) -> u64 {
        ByteSource::size(self)
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        ByteSource::read(self, max)
    }
}

/// Bytes in memory, read like a `byte-source`, for native unit tests.
#[derive(Debug, Default)]
pub struct MemoryBytes {
    bytes: Vec<u8>,
    position: Mutex<usize>,
}

impl MemoryBytes {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        MemoryBytes { bytes: bytes.into(), position: Mutex::new(0) }
    }
}

impl ByteReader for MemoryBytes {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        let mut position = self.position.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = *position;
        let end = start.saturating_add(max as usize).min(self.bytes.len());
        *position = end;
        Ok(self.bytes[start..end].to_vec())
    }
}

/// Why [`read_to_end`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the host could not read the stream: {0}")]
    Host(String),
    #[error("the stream announced {announced} bytes but delivered {delivered}")]
    LengthMismatch { announced: u64, delivered: u64 },
}

/// Reads `reader` to its end in chunks of [`READ_CHUNK_BYTES`], handing each chunk to
/// `on_chunk`, and returns the number of bytes read. Fails when the host reports an error or
/// the stream ends at another length than its `size`.
pub fn read_to_end(reader: &impl ByteReader, mut on_chunk: impl FnMut(&[u8])) -> Result<u64, ReadError> {
    let announced = reader.size();
    let mut delivered: u64 = 0;
    loop {
        let chunk = reader.read(READ_CHUNK_BYTES).map_err(ReadError::Host)?;
        if chunk.is_empty() {
            break;
        }
        delivered = delivered.saturating_add(chunk.len() as u64);
        if delivered > announced {
            return Err(ReadError::LengthMismatch { announced, delivered });
        }
        on_chunk(&chunk);
    }
    if delivered != announced {
        return Err(ReadError::LengthMismatch { announced, delivered });
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that delivers a different length than it announces.
    struct LyingReader {
        announced: u64,
        inner: MemoryBytes,
    }

    impl ByteReader for LyingReader {
        fn size(&self) -> u64 {
            self.announced
        }
        fn read(&self, max: u32) -> Result<Vec<u8>, String> {
            self.inner.read(max)
        }
    }

    #[test]
    fn reads_every_chunk_and_counts_the_bytes() {
        let bytes: Vec<u8> = (0..(READ_CHUNK_BYTES as usize * 2 + 5)).map(|index| index as u8).collect();
        let mut received = Vec::new();
        let count = read_to_end(&MemoryBytes::new(bytes.clone()), |chunk| received.extend_from_slice(chunk));
        assert_eq!(count, Ok(bytes.len() as u64));
        assert_eq!(received, bytes);
        assert_eq!(read_to_end(&MemoryBytes::default(), |_| {}), Ok(0));
    }

    #[test]
    fn a_stream_of_another_length_than_announced_is_an_error() {
        let short = LyingReader { announced: 10, inner: MemoryBytes::new(vec![1; 4]) };
        assert_eq!(read_to_end(&short, |_| {}), Err(ReadError::LengthMismatch { announced: 10, delivered: 4 }));
        let long = LyingReader { announced: 2, inner: MemoryBytes::new(vec![1; 4]) };
        assert_eq!(read_to_end(&long, |_| {}), Err(ReadError::LengthMismatch { announced: 2, delivered: 4 }));
    }
}
