//! NC06 through the engine as the filesystem's [`Codec`] (the filesystem crate knows
//! nothing of the model), and the window-at-a-time compression and decoding of files
//! that the mount, the command line and `pack` share ([`Streamed`],
//! [`decompress_streamed`]).

mod blob;
mod streamed;

pub use streamed::{decompress_streamed, read_header, Streamed};
use streamed::{read_header_bytes, Base, Stretch};

use blob::Nc06Blob;
use log::Level;
use nacrithfs_engine::{BlobFrames, CompressOptions, EngineSet, FrameSource, ProgressSink};
use nacrithfs_fs::store::codec::{within, BlobLens, BlobOut, Meter, Source};
use nacrithfs_fs::store::{Codec, OpenBlob};
use nacrithfs_fs::{FsError, FsResult};
use nc06::format::{Blob, ExtentKind, FormatError, Index};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// NC06 through the language model: compressed by the default model, each blob
/// decoded by the model that coded it.
pub struct Nc06Codec {
    engines: Arc<EngineSet>,
    opts: CompressOptions,
    /// Text chunks decoded since the start (reads, and chunks a change touched).
    model_decodes: Arc<AtomicU64>,
    /// Binary frames of old blobs taken as they are into new ones since the start.
    frames_reused: AtomicU64,
    /// Files larger than this are compressed a window of this many bytes at a time.
    stream_window: usize,
}

/// The default window of a streamed compression. What a compression holds at once is a
/// few times this (the window, its binary bytes, their frames, its tokens), whatever
/// the file's size.
pub const STREAM_WINDOW: usize = 8 << 20;

impl Nc06Codec {
    /// A codec over `engines` with the default compression options.
    pub fn new(engines: Arc<EngineSet>) -> Self {
        Nc06Codec {
            engines,
            opts: CompressOptions::default(),
            model_decodes: Arc::default(),
            frames_reused: AtomicU64::new(0),
            stream_window: STREAM_WINDOW,
        }
    }

    /// The same codec compressing files larger than `bytes` a window of `bytes` at a
    /// time (at least 1 MiB, one frame).
    pub fn with_stream_window(mut self, bytes: usize) -> Self {
        self.stream_window = bytes.max(1 << 20);
        self
    }

    /// The same codec coding new text with the model's `window` (each file keeps the
    /// window it was coded with while its chunks are copied into a new blob).
    pub fn with_window(mut self, window: nc06::Window) -> Self {
        self.opts.window = window;
        self
    }

    /// The same codec aiming for text chunks of `bytes`.
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.opts.chunk_size = bytes;
        self
    }

    /// The options of a compression inside the filesystem: always verified.
    fn fs_options(&self) -> CompressOptions {
        let mut opts = self.opts.clone();
        opts.verify = true;
        opts
    }
}

/// The engine's progress into the filesystem's meter (tokens, counting the verifying
/// decode).
struct MeterSink<'a>(&'a Meter);

impl ProgressSink for MeterSink<'_> {
    fn total(&self, tokens: u64) {
        self.0.set_total(tokens);
    }
    fn add(&self, n: u64) {
        self.0.add(n);
    }
}

/// An engine error as the filesystem reports it: EIO (ENOMEM when the model has no
/// room), logged as a warning that names the file (the core adds the name).
pub(crate) fn fs_error(what: &str, e: nacrithfs_engine::Error) -> FsError {
    FsError::new(e.errno(), Level::Warn, what.to_string()).with_source(e)
}

impl Nc06Codec {
    /// A file of at most one window, in memory: the whole-file never-worse choices
    /// apply, and the blob is the one `nacrithfs compress` makes.
    fn compress_whole(&self, src: &Source<'_>, out: &BlobOut<'_>, meter: &Meter) -> FsResult<u64> {
        let data = (src.read)(0, src.len)?;
        // The filesystem never stores an unverified blob.
        let blob = self
            .engines
            .default_engine()
            .compress(&data, &self.fs_options(), Some(&MeterSink(meter)))
            .map_err(|e| fs_error("compressing", e))?
            .blob;
        write_blob(out, &blob, src.len)
    }

    /// A file larger than one window, a window at a time (see [`Streamed`]), taking
    /// the frames `frames` holds as they are.
    fn compress_streamed(
        &self,
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
        frames: Option<&dyn FrameSource>,
    ) -> FsResult<u64> {
        let engine = self.engines.default_engine();
        let opts = self.fs_options();
        let stats = Streamed {
            engine,
            opts: &opts,
            window: self.stream_window,
            keep_larger: false,
            frames,
        }
        .compress(src, out, meter, None)?;
        Ok(stats.compressed)
    }

    /// [`Codec::compress`], taking the frames of `base` (the file's old blob) as they
    /// are where its new bytes match them: a large binary file changed in a few places
    /// costs a copy of its other frames, not a compression of them. (A file of one
    /// window is compressed whole, afresh.)
    fn compress_over(
        &self,
        base: &Nc06Blob,
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
    ) -> FsResult<u64> {
        if src.len <= self.stream_window as u64 {
            return self.compress_whole(src, out, meter);
        }
        let frames = BlobFrames::new(&base.blob, &base.index, &base.payload);
        let n = self.compress_streamed(src, out, meter, Some(&frames));
        log::debug!(
            "compressed again: {} of {} binary frames copied from the old blob",
            frames.reused(),
            base.blob.frames.len()
        );
        self.frames_reused
            .fetch_add(frames.reused(), Ordering::Relaxed);
        n
    }
}

/// Writes an in-memory blob as the blob of a file of `len` bytes (unless it is no
/// smaller).
fn write_blob(out: &BlobOut<'_>, blob: &[u8], len: u64) -> FsResult<u64> {
    if blob.len() as u64 >= len {
        return Ok(blob.len() as u64);
    }
    out.file
        .write_all_at(blob, 0)
        .map_err(|e| FsError::io("blob", e))?;
    Ok(blob.len() as u64)
}

/// The stretches of a file of `len` bytes whose old blob's tables are `index` and
/// whose bytes in `clean` (sorted, disjoint) are still the old blob's: every text
/// chunk that lies whole in `clean` is kept, and the bytes between are new.
fn stretches(index: &Index, clean: &[Range<u64>], len: u64) -> Vec<Stretch> {
    let mut out = Vec::new();
    let mut gap = 0u64;
    for e in index.extents.iter() {
        let (s, end) = (e.orig_offset, e.orig_offset + e.len);
        if e.kind == ExtentKind::Text && end <= len && within(clean, s, end) {
            if s > gap {
                out.push(Stretch::New(gap..s));
            }
            out.push(Stretch::Kept {
                chunk: e.chunk,
                len: e.len,
            });
            gap = end;
        }
    }
    if gap < len {
        out.push(Stretch::New(gap..len));
    }
    out
}

impl Codec for Nc06Codec {
    fn compress(&self, src: &Source<'_>, out: &BlobOut<'_>, meter: &Meter) -> FsResult<u64> {
        if src.len <= self.stream_window as u64 {
            self.compress_whole(src, out, meter)
        } else {
            self.compress_streamed(src, out, meter, None)
        }
    }

    fn lengths(&self, prefix: &[u8]) -> FsResult<Option<BlobLens>> {
        match Blob::parse_header(prefix) {
            Ok((blob, header_len)) => Ok(Some(BlobLens {
                original: blob.header.original_len,
                stored: header_len as u64 + blob.payload_len(),
            })),
            Err(FormatError::Truncated(_)) => Ok(None),
            Err(e) => Err(fs_error("blob header", e.into())),
        }
    }

    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>> {
        let (blob, header) = read_header_bytes(&file)?;
        let engine = self.engines.decoder(&blob);
        Ok(Arc::new(Nc06Blob::new(
            engine,
            blob,
            &header,
            file,
            self.model_decodes.clone(),
        )))
    }

    /// Copies every text chunk of `base` that lies whole in `clean` (and in the new
    /// length) when the default engine codes as `base` was coded; reads and codes the
    /// stretches between them a window at a time (taking `base`'s frames where their
    /// bytes match). What it holds is a few windows, whatever the file's size.
    fn recompress(
        &self,
        base: &dyn OpenBlob,
        clean: &[Range<u64>],
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
    ) -> FsResult<u64> {
        let engine = self.engines.default_engine();
        let mut opts = self.fs_options();
        let Some(base) = base.as_any().downcast_ref::<Nc06Blob>() else {
            return self.compress(src, out, meter);
        };
        // The file keeps the window it was coded with, so its chunks can be copied
        // under a mount with another --ctx.
        opts.window = base.blob.header.window;
        if !engine.can_reuse(&base.blob.header, &opts) {
            // Another model's or build's chunks cannot be copied; frames can.
            return self.compress_over(base, src, out, meter);
        }
        let stretches = stretches(&base.index, clean, src.len);
        if !stretches.iter().any(|s| matches!(s, Stretch::Kept { .. })) {
            return self.compress_over(base, src, out, meter);
        }
        let frames = BlobFrames::new(&base.blob, &base.index, &base.payload);
        let stats = Streamed {
            engine,
            opts: &opts,
            window: self.stream_window,
            keep_larger: false,
            frames: Some(&frames),
        }
        .compress_stretches(
            src,
            &stretches,
            Some(&Base {
                blob: &base.blob,
                index: &base.index,
                payload: &base.payload,
            }),
            out,
            meter,
            None,
        )?;
        self.frames_reused
            .fetch_add(frames.reused(), Ordering::Relaxed);
        log::debug!(
            "compressed again: {} of {} text chunks and {} of {} binary frames copied from the old blob",
            stats.kept_chunks,
            stats.chunks,
            frames.reused(),
            stats.frames
        );
        Ok(stats.compressed)
    }

    fn model_decodes(&self) -> u64 {
        self.model_decodes.load(Ordering::Relaxed)
    }

    fn frames_reused(&self) -> u64 {
        self.frames_reused.load(Ordering::Relaxed)
    }
}
