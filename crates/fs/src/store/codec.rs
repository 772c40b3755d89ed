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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A file to compress: its length, and its bytes at any offset. A codec reads it a
/// window at a time (so it never holds a large file whole); a read fails when the file
/// changed meanwhile, and the compression is given up.
pub struct Source<'a> {
    /// The file's length.
    pub len: u64,
    /// `read(offset, len)`: exactly those bytes.
    pub read: &'a dyn Fn(u64, u64) -> FsResult<Vec<u8>>,
}

/// Where a codec writes a blob.
pub struct BlobOut<'a> {
    /// The empty file the blob goes into, from its first byte. The core gives it the
    /// file's metadata, syncs it and renames it over the plaintext.
    pub file: &'a File,
    /// A new unlinked scratch file on the backing filesystem, for what a codec must
    /// hold until it can write it (NC06: a large file's streams and frames, which
    /// follow a header it knows only at the end).
    pub scratch: &'a dyn Fn() -> FsResult<File>,
}

/// What the filesystem needs from a codec.
pub trait Codec: Send + Sync + 'static {
    /// Writes the blob of `src` into `out.file` and returns its length, reporting
    /// progress to `meter`. The blob must already be verified to decode. A blob of
    /// `src.len` bytes or more need not be written (the file will stay plaintext):
    /// its length alone is returned.
    fn compress(&self, src: &Source<'_>, out: &BlobOut<'_>, meter: &Meter) -> FsResult<u64>;
    /// The lengths recorded in a blob whose first bytes are `prefix`; `Ok(None)` when
    /// more bytes are needed.
    fn lengths(&self, prefix: &[u8]) -> FsResult<Option<BlobLens>>;
    /// Opens the blob at the start of `file` for random-access decoding. Reads only
    /// what it needs up front (for NC06: the header and tables); pieces are read when
    /// decoded, so an open blob holds memory in proportion to its tables, not to the
    /// file. Bytes after the blob's [`OpenBlob::stored_len`] are not the codec's (the
    /// core keeps its overlay log there).
    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>>;
    /// [`Codec::compress`] of a changed file whose old blob is `base`: the ranges in
    /// `clean` (sorted, disjoint) still hold `base`'s bytes at the same offsets. A
    /// codec may copy what lies in `clean` from `base` as it is coded (NC06: whole
    /// text chunks) and read only the rest. By default it compresses the file afresh.
    fn recompress(
        &self,
        base: &dyn OpenBlob,
        clean: &[Range<u64>],
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
    ) -> FsResult<u64> {
        let _ = (base, clean);
        self.compress(src, out, meter)
    }
    /// How many pieces that needed the model (NC06: text chunks) were decoded so far,
    /// for `status`: the overlay's promise is that appends decode none.
    fn model_decodes(&self) -> u64 {
        0
    }
    /// How many binary frames of old blobs went into new blobs as they were, not
    /// compressed again, for `status`.
    fn frames_reused(&self) -> u64 {
        0
    }
}

/// What a blob's header says of its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLens {
    /// The original file's length.
    pub original: u64,
    /// The blob's own length in its file (header and payload).
    pub stored: u64,
}

/// An opened blob whose pieces can be decoded independently.
pub trait OpenBlob: Send + Sync {
    /// The original file's length.
    fn len(&self) -> u64;
    /// The blob's own bytes in its file: what follows is not part of it.
    fn stored_len(&self) -> u64;
    /// For a codec to find its own blob type behind the trait object.
    fn as_any(&self) -> &dyn std::any::Any;
    /// What tells this blob from another blob written later at the same inode, so
    /// that decoded pieces cached for one are never served for the other: a hash of
    /// all that describes it (NC06: its header and tables, which hold the CRC-32C of
    /// the file and of every chunk and frame).
    fn identity(&self) -> u64;
    /// Whether the original file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(offset, len)` of every piece, in order, tiling `0..len()`: the units in which
    /// it is decoded and cached.
    fn extents(&self) -> &[(u64, u64)];
    /// Decodes pieces `range`, returning their bytes concatenated. Never asked for a
    /// hole.
    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>>;
    /// [`OpenBlob::decode`] for pieces nobody is waiting for yet (the ones after a
    /// reader that reads in order): a codec may run them behind the decodes that are
    /// waited for, until `wanted` is set (a reader now waits for them).
    fn decode_ahead(&self, range: Range<usize>, wanted: Arc<AtomicBool>) -> FsResult<Vec<u8>> {
        let _ = wanted;
        self.decode(range)
    }
    /// Whether decoding piece `i` runs the model (NC06: a text chunk): only such
    /// pieces are decoded ahead of the reads, since a frame of the binary codec
    /// decodes in milliseconds when it is read.
    fn needs_model(&self, i: usize) -> bool {
        let _ = i;
        false
    }
    /// Whether piece `i` is a hole: zeros, stored as nothing, served without
    /// decoding (and as a hole to `SEEK_HOLE`).
    fn is_hole(&self, i: usize) -> bool {
        let _ = i;
        false
    }
    /// Whether piece `i` is stored as its own bytes (a raw binary frame): then
    /// [`OpenBlob::read_plain`] reads any part of it straight from the blob's file,
    /// and the kernel's page cache keeps it rather than the LRU. A 4 KiB read of such
    /// a piece costs a 4 KiB `pread`, not a copy of the whole piece.
    fn is_plain(&self, i: usize) -> bool {
        let _ = i;
        false
    }
    /// Whether `bytes` are piece `i`'s original bytes, by a checksum the blob holds
    /// of them (NC06: a text chunk's CRC-32C, which its decoding is checked against
    /// too). A file's own bytes, read from it when it was compressed, may then stand
    /// for the piece decoded. `false` when the blob cannot tell.
    fn is_original(&self, i: usize, bytes: &[u8]) -> bool {
        let _ = (i, bytes);
        false
    }
    /// Appends bytes `range` of piece `i` (offsets within the piece, which
    /// [`OpenBlob::is_plain`]) to `out`. The piece's checksum is checked, over all of
    /// it, the first time any of it is read.
    fn read_plain(&self, i: usize, range: Range<u64>, out: &mut Vec<u8>) -> FsResult<()> {
        let _ = (range, out);
        Err(damaged(format!("piece {i} is not stored plain")))
    }
}

/// The bytes `start..end` of the original file that extents `range` cover, or `None`
/// when `range` is empty or outside `extents`.
pub fn byte_span(extents: &[(u64, u64)], range: Range<usize>) -> Option<(u64, u64)> {
    let first = extents.get(range.start)?;
    let last = extents.get(range.end.checked_sub(1)?)?;
    (range.start < range.end).then_some((first.0, last.0 + last.1))
}

/// Whether `start..end` lies within one of `ranges` (sorted and disjoint, as the
/// `clean` ranges of [`Codec::recompress`] are).
pub fn within(ranges: &[Range<u64>], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|r| r.end < end);
    ranges
        .get(i)
        .is_some_and(|r| r.start <= start && end <= r.end)
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
    /// Called before every decode of a blob it opens: a test holds a decode there to
    /// run the core's other operations while a compressor is in the middle of one.
    pub before_decode: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl StandInCodec {
    /// The stand-in with extents of `extent` bytes.
    pub fn new(extent: u64) -> StandInCodec {
        StandInCodec {
            extent,
            before_decode: None,
        }
    }

    /// The blob the stand-in makes of `data`.
    pub fn blob_of(&self, data: &[u8]) -> FsResult<Vec<u8>> {
        let z = zstd::encode_all(data, 3).map_err(|e| FsError::io("zstd", e))?;
        let mut blob = FAKE_MAGIC.to_vec();
        blob.extend_from_slice(&(data.len() as u64).to_le_bytes());
        blob.extend_from_slice(&((FAKE_HEAD + z.len()) as u64).to_le_bytes());
        blob.extend(z);
        Ok(blob)
    }
}

const FAKE_MAGIC: &[u8; 4] = b"FAKE";
/// Magic, original length, stored length.
const FAKE_HEAD: usize = 20;

impl Codec for StandInCodec {
    fn compress(&self, src: &Source<'_>, out: &BlobOut<'_>, meter: &Meter) -> FsResult<u64> {
        meter.set_total(src.len);
        let blob = self.blob_of(&(src.read)(0, src.len)?)?;
        meter.add(src.len);
        if blob.len() as u64 >= src.len {
            return Ok(blob.len() as u64);
        }
        out.file
            .write_all_at(&blob, 0)
            .map_err(|e| FsError::io("blob", e))?;
        Ok(blob.len() as u64)
    }

    fn lengths(&self, prefix: &[u8]) -> FsResult<Option<BlobLens>> {
        if prefix.len() < FAKE_HEAD {
            return Ok(None);
        }
        if &prefix[..4] != FAKE_MAGIC {
            return Err(damaged("bad magic"));
        }
        let word = |i: usize| u64::from_le_bytes(prefix[i..i + 8].try_into().unwrap_or([0; 8]));
        Ok(Some(BlobLens {
            original: word(4),
            stored: word(12),
        }))
    }

    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>> {
        let blob = read_whole(&file)?;
        let lens = self.lengths(&blob)?.ok_or_else(|| damaged("truncated"))?;
        let z = usize::try_from(lens.stored)
            .ok()
            .and_then(|end| blob.get(FAKE_HEAD..end))
            .ok_or_else(|| damaged("truncated"))?;
        let data = zstd::decode_all(z).map_err(|e| damaged("zstd stream").with_source(e))?;
        let len = lens.original;
        if data.len() as u64 != len {
            return Err(damaged("length mismatch"));
        }
        let step = self.extent.max(1);
        let extents = (0..len)
            .step_by(step as usize)
            .map(|o| (o, step.min(len - o)))
            .collect();
        Ok(Arc::new(StandInBlob {
            identity: hash64(&blob),
            data,
            extents,
            stored: lens.stored,
            before_decode: self.before_decode.clone(),
        }))
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

/// A 64-bit hash of `bytes`, the same within a process (for [`OpenBlob::identity`]).
pub fn hash64(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

struct StandInBlob {
    /// A hash of the whole blob.
    identity: u64,
    data: Vec<u8>,
    extents: Vec<(u64, u64)>,
    stored: u64,
    before_decode: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl OpenBlob for StandInBlob {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn stored_len(&self) -> u64 {
        self.stored
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn identity(&self) -> u64 {
        self.identity
    }

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
        if let Some(hook) = &self.before_decode {
            hook();
        }
        let Some((start, end)) = byte_span(&self.extents, range) else {
            return Ok(Vec::new());
        };
        Ok(self.data[start as usize..end as usize].to_vec())
    }

    /// The stand-in plays a model codec: every piece is slow to decode.
    fn needs_model(&self, _i: usize) -> bool {
        true
    }
}
