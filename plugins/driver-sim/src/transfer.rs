//! What moves over `hyperplane:driver/transfer` besides a template's image: the changes of a
//! delta pull and an instance's exported disk.
//!
//! [`DeltaReader`] and [`ByteWriter`] abstract the host's `image-delta` and `byte-sink`
//! resources (like the SDK's [`ByteReader`](hyperplane_guest::bytes::ByteReader) does for a
//! `byte-source`), so the simulator runs natively in unit tests against in-memory fakes; the
//! component glue implements them for the generated resource types. [`SimulatedDisk`] is the
//! content the simulator exports: it keeps no image bytes, so a disk is made up
//! deterministically from the instance id.

use hyperplane_guest::types::{ByteSpan, DiskFormat, TemplateRef};

use crate::identity::stable_hash;
use crate::simulator::QCOW2_MAGIC;

/// The most the simulator writes into a sink at once (the host takes up to 1 MiB per write).
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// The size of an exported disk whose template has no recorded size.
pub const DEFAULT_EXPORT_BYTES: u64 = 1024 * 1024;
/// The length of the pattern a simulated disk repeats.
const PATTERN_BYTES: usize = 4096;

/// The operations of `transfer.image-delta`, with the host's semantics.
pub trait DeltaReader {
    /// The template version the delta applies to.
    fn base(&self) -> TemplateRef;
    /// Size of the new image in bytes.
    fn size(&self) -> u64;
    /// The changed spans, ascending and not overlapping.
    fn changes(&self) -> Vec<ByteSpan>;
    /// Up to `max` bytes of the changed data; an empty vector at the end.
    fn read(&self, max: u32) -> Result<Vec<u8>, String>;
}

/// The operations of `transfer.byte-sink`, with the host's semantics.
pub trait ByteWriter {
    /// Takes all of `bytes`; fails when the host stopped receiving (the message says why).
    fn write(&self, bytes: &[u8]) -> Result<(), String>;
}

/// The made-up disk of an instance: a 4 KiB pattern seeded by the instance id, repeated, with
/// the qcow2 magic in front when the format is qcow2. The same id always gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedDisk {
    pattern: Vec<u8>,
    format: DiskFormat,
    size_bytes: u64,
}

impl SimulatedDisk {
    pub fn new(instance_id: &str, format: DiskFormat, size_bytes: u64) -> Self {
        // xorshift64 from the id's hash (never zero, or it would stay zero).
        let mut state = stable_hash(instance_id) | 1;
        let pattern = (0..PATTERN_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        SimulatedDisk { pattern, format, size_bytes }
    }

    pub fn format(&self) -> DiskFormat {
        self.format
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The bytes at `start..end`, clamped to the disk's size.
    pub fn bytes(&self, start: u64, end: u64) -> Vec<u8> {
        let end = end.min(self.size_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(end.saturating_sub(start)).unwrap_or(0));
        let mut offset = start;
        while offset < end {
            let index = (offset % PATTERN_BYTES as u64) as usize;
            let take = (PATTERN_BYTES - index).min(usize::try_from(end - offset).unwrap_or(usize::MAX));
            bytes.extend_from_slice(&self.pattern[index..index + take]);
            offset += take as u64;
        }
        if self.format == DiskFormat::Qcow2 {
            for (offset, magic) in (0u64..).zip(QCOW2_MAGIC) {
                if let Some(byte) = offset
                    .checked_sub(start)
                    .and_then(|index| usize::try_from(index).ok())
                    .and_then(|index| bytes.get_mut(index))
                {
                    *byte = *magic;
                }
            }
        }
        bytes
    }
}
