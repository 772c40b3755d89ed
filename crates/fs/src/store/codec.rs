//! The codec seen from the filesystem: compress a whole file, read a blob's original
//! length from its first bytes, and decode independent extents of an opened blob.
//!
//! A trait object, so the filesystem core knows nothing of the model and is also
//! tested against a cheap stand-in ([`StandInCodec`]); the mount passes the real one
//! (NC06 through the model, in the `nacrithfs` binary). Errors are [`FsError`]s made by
//! the codec (EIO, or ENOMEM when the model has no room; logged as warnings); the core
//! adds the file's name.

use crate::error::{FsError, FsResult};
use log::Level;
use std::ops::Range;
use std::sync::Arc;

/// What the filesystem needs from a codec.
pub trait Codec: Send + Sync + 'static {
    /// Compresses a whole file. The returned blob must already be verified to decode.
    fn compress(&self, data: &[u8]) -> FsResult<Vec<u8>>;
    /// The original length recorded in a blob whose first bytes are `prefix`;
    /// `Ok(None)` when more bytes are needed.
    fn original_len(&self, prefix: &[u8]) -> FsResult<Option<u64>>;
    /// Parses a whole blob for random-access decoding.
    fn open(&self, blob: Vec<u8>) -> FsResult<Arc<dyn OpenBlob>>;
}

/// A parsed blob whose extents can be decoded independently.
pub trait OpenBlob: Send + Sync {
    /// The original file's length.
    fn len(&self) -> u64;
    /// Whether the original file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(offset, len)` of every extent, in order, tiling `0..len()`.
    fn extents(&self) -> &[(u64, u64)];
    /// Decodes extents `range`, returning their bytes concatenated.
    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>>;
}

/// The bytes `start..end` of the original file that extents `range` cover, or `None`
/// when `range` is empty or outside `extents`.
pub fn byte_span(extents: &[(u64, u64)], range: Range<usize>) -> Option<(u64, u64)> {
    let first = extents.get(range.start)?;
    let last = extents.get(range.end.checked_sub(1)?)?;
    (range.start < range.end).then_some((first.0, last.0 + last.1))
}

/// A blob that does not read as one: EIO, logged as a warning (its reads fail; the
/// rest of the filesystem is fine).
pub fn damaged(message: impl Into<String>) -> FsError {
    FsError::new(libc::EIO, Level::Warn, message)
}

/// A cheap stand-in codec for tests of the layers above the codec: zstd behind a
/// `FAKE` magic and the original length, cut into fixed extents of `extent` bytes.
pub struct StandInCodec {
    /// Length of every extent but the last.
    pub extent: u64,
}

const FAKE_MAGIC: &[u8; 4] = b"FAKE";

impl Codec for StandInCodec {
    fn compress(&self, data: &[u8]) -> FsResult<Vec<u8>> {
        let mut out = FAKE_MAGIC.to_vec();
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend(zstd::encode_all(data, 3).map_err(|e| FsError::io("zstd", e))?);
        Ok(out)
    }

    fn original_len(&self, prefix: &[u8]) -> FsResult<Option<u64>> {
        if prefix.len() < 12 {
            return Ok(None);
        }
        if &prefix[..4] != FAKE_MAGIC {
            return Err(damaged("bad magic"));
        }
        Ok(Some(u64::from_le_bytes(
            prefix[4..12].try_into().unwrap_or([0; 8]),
        )))
    }

    fn open(&self, blob: Vec<u8>) -> FsResult<Arc<dyn OpenBlob>> {
        let len = self
            .original_len(&blob)?
            .ok_or_else(|| damaged("truncated"))?;
        let data =
            zstd::decode_all(&blob[12..]).map_err(|e| damaged("zstd stream").with_source(e))?;
        if data.len() as u64 != len {
            return Err(damaged("length mismatch"));
        }
        let step = self.extent.max(1);
        let extents = (0..len)
            .step_by(step as usize)
            .map(|o| (o, step.min(len - o)))
            .collect();
        Ok(Arc::new(StandInBlob { data, extents }))
    }
}

struct StandInBlob {
    data: Vec<u8>,
    extents: Vec<(u64, u64)>,
}

impl OpenBlob for StandInBlob {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
        let Some((start, end)) = byte_span(&self.extents, range) else {
            return Ok(Vec::new());
        };
        Ok(self.data[start as usize..end as usize].to_vec())
    }
}
