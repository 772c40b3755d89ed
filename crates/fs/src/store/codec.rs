//! The codec seen from the filesystem: compress a whole file, read a blob's original
//! length from its first bytes, and decode independent pieces of an opened blob, read
//! from its backing file as they are needed.
//!
//! A trait object, so the filesystem core knows nothing of the model and is also
//! tested against a cheap stand-in ([`StandInCodec`]); the mount passes the real one
//! (NC06 through the model, in the `nacrithfs` binary). Errors are [`FsError`]s made by
//! the codec (EIO, or ENOMEM when the model has no room; logged as warnings); the core
//! adds the file's name.

use crate::error::{FsError, FsResult};
use log::Level;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far a compression is: units of work (for NC06: tokens coded, counting the
/// verifying decode) done of a total, which the codec sets once it knows it.
#[derive(Debug, Default)]
pub struct Meter {
    done: AtomicU64,
    total: AtomicU64,
}

impl Meter {
    /// Sets the total.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    /// Counts `n` more units done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    /// (done, total); total 0 while unknown.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// What the filesystem needs from a codec.
pub trait Codec: Send + Sync + 'static {
    /// Compresses a whole file, reporting progress to `meter`. The returned blob must
    /// already be verified to decode.
    fn compress(&self, data: &[u8], meter: &Meter) -> FsResult<Vec<u8>>;
    /// The original length recorded in a blob whose first bytes are `prefix`;
    /// `Ok(None)` when more bytes are needed.
    fn original_len(&self, prefix: &[u8]) -> FsResult<Option<u64>>;
    /// Opens the blob in `file` for random-access decoding. Reads only what it needs
    /// up front (for NC06: the header and tables); pieces are read when decoded, so an
    /// open blob holds memory in proportion to its tables, not to the file.
    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>>;
}

/// An opened blob whose pieces can be decoded independently.
pub trait OpenBlob: Send + Sync {
    /// The original file's length.
    fn len(&self) -> u64;
    /// Whether the original file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(offset, len)` of every piece, in order, tiling `0..len()`: the units in which
    /// it is decoded and cached.
    fn extents(&self) -> &[(u64, u64)];
    /// Decodes pieces `range`, returning their bytes concatenated.
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
    fn compress(&self, data: &[u8], meter: &Meter) -> FsResult<Vec<u8>> {
        meter.set_total(data.len() as u64);
        let mut out = FAKE_MAGIC.to_vec();
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend(zstd::encode_all(data, 3).map_err(|e| FsError::io("zstd", e))?);
        meter.add(data.len() as u64);
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

    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>> {
        let blob = read_whole(&file)?;
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

/// All of `file` (the stand-in keeps its blobs whole; it serves tests only).
fn read_whole(file: &File) -> FsResult<Vec<u8>> {
    let len = file.metadata().map_err(|e| FsError::io("blob", e))?.len();
    let mut out = vec![0; usize::try_from(len).map_err(|_| damaged("blob too large"))?];
    file.read_exact_at(&mut out, 0)
        .map_err(|e| FsError::io("blob", e))?;
    Ok(out)
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
