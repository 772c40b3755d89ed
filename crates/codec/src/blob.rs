//! An opened NC06 blob behind the filesystem's [`OpenBlob`]: its tables in memory, its
//! payload read from its file a piece at a time.

use crate::fs_error;
use nacrithfs_engine::{Engine, Priority};
use nacrithfs_fs::store::codec::{byte_span, hash64};
use nacrithfs_fs::store::OpenBlob;
use nacrithfs_fs::FsResult;
use nc06::format::{Blob, ExtentKind, Index, Payload};
use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A blob's payload in its backing file, read piece by piece with `pread`.
pub(crate) struct FilePayload {
    pub(crate) file: Arc<File>,
    /// Where the payload starts in the file.
    pub(crate) base: u64,
}

impl Payload for FilePayload {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, self.base + offset)?;
        Ok(Cow::Owned(buf))
    }
}

/// Where a piece stored as its own bytes lies: in raw frame `frame`, from byte `at`
/// of it.
#[derive(Clone, Copy, Debug)]
struct PlainPiece {
    frame: usize,
    at: u64,
}

/// For each of `index`'s pieces, where it lies when its frame is stored raw.
fn plain_pieces(blob: &Blob, index: &Index) -> Vec<Option<PlainPiece>> {
    let frame = nc06::format::FRAME_SIZE as u64;
    index
        .binary_offsets()
        .into_iter()
        .map(|at| {
            let at = at?;
            let f = usize::try_from(at / frame).ok()?;
            let entry = blob.frames.get(f)?;
            (entry.method == nc06::format::Method::Raw && entry.stored_len == entry.raw_len)
                .then_some(PlainPiece {
                    frame: f,
                    at: at % frame,
                })
        })
        .collect()
}

/// An opened blob: its tables and index in memory, its payload in the file; decoded
/// through the engine a piece at a time (a text chunk, or what lies in one frame).
pub(crate) struct Nc06Blob {
    engine: Arc<Engine>,
    pub(crate) blob: Blob,
    pub(crate) index: Index,
    pub(crate) payload: FilePayload,
    extents: Vec<(u64, u64)>,
    /// For each of `extents`, its kind.
    kinds: Vec<ExtentKind>,
    /// For each of `extents`, where it lies when it is in a raw frame.
    plain: Vec<Option<PlainPiece>>,
    /// For each of `extents`, its chunk when it is text.
    chunks: Vec<Option<usize>>,
    /// One bit per frame: its checksum was checked since the blob was opened.
    checked: Vec<AtomicU64>,
    stored_len: u64,
    model_decodes: Arc<AtomicU64>,
    /// A hash of the header and tables ([`OpenBlob::identity`]).
    identity: u64,
}

impl Nc06Blob {
    /// The blob `blob` (its header and tables, the bytes `header` at the start of
    /// `file`; its payload after them), decoded by `engine`; text chunks it decodes
    /// are counted in `model_decodes`.
    pub(crate) fn new(
        engine: Arc<Engine>,
        blob: Blob,
        header: &[u8],
        file: Arc<File>,
        model_decodes: Arc<AtomicU64>,
    ) -> Self {
        let index = blob.index();
        let extents = index.pieces();
        let kinds = index.kinds();
        let plain = plain_pieces(&blob, &index);
        let chunks = index.piece_chunks();
        let checked = (0..blob.frames.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let header_len = header.len();
        Nc06Blob {
            identity: hash64(header),
            engine,
            stored_len: header_len as u64 + blob.payload_len(),
            blob,
            index,
            payload: FilePayload {
                file,
                base: header_len as u64,
            },
            extents,
            kinds,
            plain,
            chunks,
            checked,
            model_decodes,
        }
    }
}

impl OpenBlob for Nc06Blob {
    fn len(&self) -> u64 {
        self.blob.header.original_len
    }

    fn stored_len(&self) -> u64 {
        self.stored_len
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

    fn is_hole(&self, i: usize) -> bool {
        self.kinds.get(i) == Some(&ExtentKind::Zero)
    }

    fn needs_model(&self, i: usize) -> bool {
        self.kinds.get(i) == Some(&ExtentKind::Text)
    }

    fn is_plain(&self, i: usize) -> bool {
        matches!(self.plain.get(i), Some(Some(_)))
    }

    fn is_original(&self, i: usize, bytes: &[u8]) -> bool {
        let (Some(&(_, len)), Some(&Some(c))) = (self.extents.get(i), self.chunks.get(i)) else {
            return false;
        };
        let Some(entry) = self.blob.chunks.get(c) else {
            return false;
        };
        bytes.len() as u64 == len && crc32c::crc32c(bytes) == entry.crc
    }

    fn read_plain(&self, i: usize, range: Range<u64>, out: &mut Vec<u8>) -> FsResult<()> {
        let not_plain = || nacrithfs_fs::store::codec::damaged(format!("piece {i} is not raw"));
        let p = self.plain.get(i).copied().flatten().ok_or_else(not_plain)?;
        let (entry, offset) = match (
            self.blob.frames.get(p.frame),
            self.index.frame_offsets.get(p.frame),
        ) {
            (Some(e), Some(&o)) => (e, o),
            _ => return Err(not_plain()),
        };
        let (word, bit) = (p.frame / 64, 1u64 << (p.frame % 64));
        let checked = self.checked.get(word).ok_or_else(not_plain)?;
        let (from, to) = (p.at + range.start, p.at + range.end);
        if from > to || to > entry.raw_len as u64 {
            return Err(not_plain());
        }
        let what = |e| fs_error(&format!("reading raw frame {}", p.frame), e);
        if checked.load(Ordering::Acquire) & bit == 0 {
            // First read of this frame: all of it, against its checksum.
            let raw = self
                .payload
                .read(offset, entry.raw_len as usize)
                .map_err(|e| what(nacrithfs_engine::Error::Payload(e)))?;
            if crc32c::crc32c(&raw) != entry.crc {
                return Err(what(nacrithfs_engine::Error::Frame {
                    frame: p.frame,
                    source: nc06::format::FrameError::Checksum,
                }));
            }
            checked.fetch_or(bit, Ordering::AcqRel);
            out.extend_from_slice(&raw[from as usize..to as usize]);
            return Ok(());
        }
        let at = out.len();
        out.resize(at + (to - from) as usize, 0);
        self.payload
            .file
            .read_exact_at(&mut out[at..], self.payload.base + offset + from)
            .map_err(|e| what(nacrithfs_engine::Error::Payload(e)))
    }

    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
        self.decode_at(range, Priority::Foreground)
    }

    fn decode_ahead(&self, range: Range<usize>, wanted: Arc<AtomicBool>) -> FsResult<Vec<u8>> {
        self.decode_at(range, Priority::Background(wanted))
    }
}

impl Nc06Blob {
    /// Decodes pieces `range` with the engine, at `priority`.
    fn decode_at(&self, range: Range<usize>, priority: Priority) -> FsResult<Vec<u8>> {
        let Some((start, end)) = byte_span(&self.extents, range) else {
            return Ok(Vec::new());
        };
        let texts = self.index.extents[self.index.overlapping(start, end)]
            .iter()
            .filter(|e| e.kind == ExtentKind::Text)
            .count();
        self.model_decodes
            .fetch_add(texts as u64, Ordering::Relaxed);
        let (base, bytes) = self
            .engine
            .decode_range_at(
                &self.blob,
                &self.index,
                &self.payload,
                start..end,
                None,
                priority,
            )
            .map_err(|e| fs_error(&format!("decoding bytes {start}..{end}"), e))?;
        if base != start || bytes.len() as u64 != end - start {
            return Err(nacrithfs_fs::store::codec::damaged(format!(
                "decoded range {base}+{} does not match extents {start}..{end}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}
