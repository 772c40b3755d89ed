//! The codec the mount uses: NC06 through the engine, behind the filesystem's
//! [`Codec`] trait (the filesystem crate knows nothing of the model).

use log::Level;
use nacrithfs_engine::{
    BlobFrames, CompressOptions, Engine, EngineSet, FrameSource, Part, ProgressSink, Stats,
};
use nacrithfs_fs::store::codec::byte_span;
use nacrithfs_fs::store::codec::{BlobLens, BlobOut, Meter, Source};
use nacrithfs_fs::store::{Codec, OpenBlob};
use nacrithfs_fs::{FsError, FsResult};
use nc06::format::{Blob, ExtentKind, FormatError, Index, Payload};
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
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
fn fs_error(what: &str, e: nacrithfs_engine::Error) -> FsError {
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

/// A compression of a file a window at a time, for files larger than one window (the
/// mount's and the command line's): what it holds is a few windows' worth of bytes,
/// whatever the file's size.
pub struct Streamed<'a> {
    /// What codes it.
    pub engine: &'a Engine,
    /// How.
    pub opts: &'a CompressOptions,
    /// Bytes read and coded at a time.
    pub window: usize,
    /// Whether a blob that is not smaller than the file is written all the same (a
    /// command line compressor always gives an output; the mount keeps such a file
    /// plain).
    pub keep_larger: bool,
    /// Frames to take as they are where the file's binary bytes match them (the old
    /// blob of a file compressed again).
    pub frames: Option<&'a dyn FrameSource>,
}

impl Streamed<'_> {
    /// Compresses `src` into the blob file of `out`: the streams and frames go to two
    /// scratch files while they are coded, and into the blob after its header, which is
    /// read back (header compared, streams and frames by CRC-32C) before this returns.
    /// `meter` counts bytes read, `progress` tokens as the model codes them. Returns
    /// the blob's statistics.
    pub fn compress(
        &self,
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
        progress: Option<nacrithfs_engine::Progress<'_>>,
    ) -> FsResult<Stats> {
        let Streamed {
            engine,
            opts,
            window,
            keep_larger,
            frames: reuse,
        } = *self;
        let mut enc = engine.stream_encoder(opts);
        if let Some(f) = reuse {
            enc = enc.reusing_frames(f);
        }
        let mut streams = Spool::new((out.scratch)()?);
        let mut frames = Spool::new((out.scratch)()?);
        meter.set_total(src.len);
        let mut off = 0;
        while off < src.len {
            let want = (src.len - off).min(window.max(1) as u64);
            let data = (src.read)(off, want)?;
            let eof = off + want == src.len;
            let coded = enc
                .push(&data, eof, progress)
                .map_err(|e| fs_error("compressing", e))?;
            for s in &coded.streams {
                streams.append(s)?;
            }
            for f in &coded.frames {
                frames.append(f)?;
            }
            off += coded.consumed as u64;
            meter.add(coded.consumed as u64);
        }
        let done = enc.finish().map_err(|e| fs_error("compressing", e))?;
        let stats = done.stats;
        if stats.compressed >= src.len && !keep_larger {
            return Ok(stats);
        }
        if streams.len != done.stream_bytes || frames.len != done.frame_bytes {
            return Err(nacrithfs_fs::store::codec::damaged(
                "the spooled streams and frames do not match the blob's tables",
            ));
        }
        out.file
            .write_all_at(&done.header, 0)
            .map_err(|e| FsError::io("blob", e))?;
        let mut at = done.header.len() as u64;
        for spool in [&mut streams, &mut frames] {
            spool.copy_to(out.file, at)?;
            at += spool.len;
        }
        // The container must read back as written: its header, and every spooled byte.
        let back = read_at(out.file, 0, done.header.len(), "blob")?;
        let streams_back = crc_at(out.file, done.header.len() as u64, streams.len)?;
        let frames_back = crc_at(out.file, done.header.len() as u64 + streams.len, frames.len)?;
        if back != done.header || streams_back != streams.crc || frames_back != frames.crc {
            return Err(fs_error(
                "compressing",
                nacrithfs_engine::Error::ContainerRoundTrip,
            ));
        }
        log::debug!(
            "compressed {} bytes in windows of {window}: {} chunks, {} frames, {} bytes",
            src.len,
            stats.chunks,
            stats.frames,
            stats.compressed
        );
        Ok(stats)
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

/// A scratch file written in order, with the length and CRC-32C of what went in.
struct Spool {
    file: std::io::BufWriter<File>,
    len: u64,
    crc: u32,
}

impl Spool {
    fn new(file: File) -> Self {
        Spool {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            len: 0,
            crc: 0,
        }
    }

    fn append(&mut self, bytes: &[u8]) -> FsResult<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| FsError::io("scratch file", e))?;
        self.len += bytes.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        Ok(())
    }

    /// Copies everything appended to `to` at `at`, a block at a time.
    fn copy_to(&mut self, to: &File, at: u64) -> FsResult<()> {
        self.file
            .flush()
            .map_err(|e| FsError::io("scratch file", e))?;
        let from = self.file.get_ref();
        for (off, n) in blocks(self.len) {
            let block = read_at(from, off, n, "scratch file")?;
            to.write_all_at(&block, at + off)
                .map_err(|e| FsError::io("blob", e))?;
        }
        Ok(())
    }
}

/// The unit in which spooled bytes are copied and read back.
const COPY_BLOCK: usize = 1 << 20;

/// `(offset, len)` of the blocks that `len` bytes are copied and read back in.
fn blocks(len: u64) -> impl Iterator<Item = (u64, usize)> {
    (0..len)
        .step_by(COPY_BLOCK)
        .map(move |off| (off, (len - off).min(COPY_BLOCK as u64) as usize))
}

/// `len` bytes of `f` (the `what` file, for the error) at `off`.
fn read_at(f: &File, off: u64, len: usize, what: &str) -> FsResult<Vec<u8>> {
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, off)
        .map_err(|e| FsError::io(what, e))?;
    Ok(buf)
}

/// The CRC-32C of `len` bytes of the blob file `f` at `off`, read a block at a time.
fn crc_at(f: &File, off: u64, len: u64) -> FsResult<u32> {
    blocks(len).try_fold(0, |crc, (at, n)| {
        Ok(crc32c::crc32c_append(
            crc,
            &read_at(f, off + at, n, "blob")?,
        ))
    })
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
        let (blob, header_len) = read_header(&file)?;
        let index = blob.index();
        let extents = index.pieces();
        let holes = index.holes();
        let plain = plain_pieces(&blob, &index);
        let checked = (0..blob.frames.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Arc::new(Nc06Blob {
            engine: self.engines.decoder(&blob),
            stored_len: header_len as u64 + blob.payload_len(),
            blob,
            index,
            payload: FilePayload {
                file,
                base: header_len as u64,
            },
            extents,
            holes,
            plain,
            checked,
            model_decodes: self.model_decodes.clone(),
        }))
    }

    /// Copies every text chunk of `base` that lies whole in `clean` (and in the new
    /// length) when the default engine codes as `base` was coded; reads and codes the
    /// stretches between them.
    fn recompress(
        &self,
        base: &dyn OpenBlob,
        clean: &[Range<u64>],
        src: &Source<'_>,
        out: &BlobOut<'_>,
        meter: &Meter,
    ) -> FsResult<u64> {
        let (len, read) = (src.len, src.read);
        let engine = self.engines.default_engine();
        let opts = self.fs_options();
        let Some(base) = base.as_any().downcast_ref::<Nc06Blob>() else {
            return self.compress(src, out, meter);
        };
        if !engine.can_reuse(&base.blob.header, &opts) {
            // Another model's or build's chunks cannot be copied; frames can.
            return self.compress_over(base, src, out, meter);
        }
        let inside = |s: u64, e: u64| {
            e <= len && {
                let i = clean.partition_point(|r| r.end < e);
                clean.get(i).is_some_and(|r| r.start <= s && e <= r.end)
            }
        };
        // (kept chunk, or a stretch of new bytes) in file order.
        let mut plan: Vec<Result<usize, Range<u64>>> = Vec::new();
        let mut gap = 0u64;
        for e in base.index.extents.iter() {
            let (s, end) = (e.orig_offset, e.orig_offset + e.len);
            if e.kind == ExtentKind::Text && inside(s, end) {
                if s > gap {
                    plan.push(Err(gap..s));
                }
                plan.push(Ok(e.chunk));
                gap = end;
            }
        }
        if gap < len {
            plan.push(Err(gap..len));
        }
        // Nothing to copy, or more new bytes than one window holds: afresh (in
        // windows, for a large file).
        let new_bytes: u64 = plan
            .iter()
            .filter_map(|p| p.as_ref().err())
            .map(|r| r.end - r.start)
            .sum();
        if !plan.iter().any(|p| p.is_ok()) || new_bytes > self.stream_window as u64 {
            return self.compress_over(base, src, out, meter);
        }
        let bytes: Vec<Vec<u8>> = plan
            .iter()
            .filter_map(|p| p.as_ref().err())
            .map(|r| read(r.start, r.end - r.start))
            .collect::<FsResult<_>>()?;
        let mut new = bytes.iter();
        let parts: Vec<Part> = plan
            .iter()
            .map(|p| match p {
                Ok(k) => Part::Kept(*k),
                Err(_) => Part::New(new.next().map(|b| &b[..]).unwrap_or_default()),
            })
            .collect();
        let kept = parts.iter().filter(|p| matches!(p, Part::Kept(_))).count();
        let out_blob = engine
            .recompress(
                &base.blob,
                &base.index,
                &base.payload,
                &parts,
                &opts,
                Some(&MeterSink(meter)),
            )
            .map_err(|e| fs_error("compressing", e))?;
        log::debug!(
            "compressed again: {kept} of {} text chunks copied from the old blob",
            out_blob.stats.chunks
        );
        write_blob(out, &out_blob.blob, len)
    }

    fn model_decodes(&self) -> u64 {
        self.model_decodes.load(Ordering::Relaxed)
    }

    fn frames_reused(&self) -> u64 {
        self.frames_reused.load(Ordering::Relaxed)
    }
}

/// The first bytes read of a blob when it is opened: its header and tables are a few
/// bytes per 16 KiB chunk or 1 MiB frame, so this covers files of many MB at once.
const HEADER_READ: usize = 64 << 10;

/// Reads and validates the header and tables of the blob in `file` (reading more while
/// they go on) and checks that the file holds the payload they describe. Returns the blob without
/// its payload and where the payload starts.
pub fn read_header(file: &File) -> FsResult<(Blob, usize)> {
    let len = file.metadata().map_err(|e| FsError::io("blob", e))?.len();
    let mut want = HEADER_READ;
    loop {
        let n = want.min(usize::try_from(len).unwrap_or(usize::MAX));
        let mut buf = vec![0; n];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| FsError::io("blob", e))?;
        match Blob::parse_header(&buf) {
            Ok((blob, header_len)) => {
                // Bytes after the payload are the filesystem's (its overlay log).
                if len - (header_len as u64) < blob.payload_len() {
                    return Err(fs_error("blob", FormatError::Truncated("payload").into()));
                }
                return Ok((blob, header_len));
            }
            Err(FormatError::Truncated(_)) if (n as u64) < len => want = want.saturating_mul(4),
            Err(e) => return Err(fs_error("blob", e.into())),
        }
    }
}

/// Decodes the blob in `file` (its header and tables `blob`, its payload after
/// `header_len` bytes) into `out`, about `window` bytes at a time: the text chunks of
/// each window whole and in lockstep, only the frames it lies in. Every chunk and
/// frame is checked as it is decoded, and the whole file's CRC-32C at the end (after
/// its bytes went out: a reader of `out` must take an error as "not the file").
/// Returns the original length.
pub fn decompress_streamed(
    engine: &Engine,
    blob: &Blob,
    header_len: usize,
    file: Arc<File>,
    out: &mut dyn Write,
    window: usize,
    progress: Option<nacrithfs_engine::Progress<'_>>,
) -> FsResult<u64> {
    let index = blob.index();
    let payload = FilePayload {
        file,
        base: header_len as u64,
    };
    let len = blob.header.original_len;
    let (mut done, mut crc) = (0u64, 0u32);
    while done < len {
        let end = done.saturating_add(window.max(1) as u64).min(len);
        let (lo, bytes) = engine
            .decode_range(blob, &index, &payload, done, end, progress)
            .map_err(|e| fs_error(&format!("decoding bytes {done}..{end}"), e))?;
        let skip = done
            .checked_sub(lo)
            .and_then(|k| usize::try_from(k).ok())
            .filter(|&k| k < bytes.len())
            .ok_or_else(|| {
                nacrithfs_fs::store::codec::damaged(format!(
                    "decoding bytes {done}..{end} gave {} bytes at {lo}",
                    bytes.len()
                ))
            })?;
        let new = &bytes[skip..];
        out.write_all(new)
            .map_err(|e| FsError::io("the output", e))?;
        crc = crc32c::crc32c_append(crc, new);
        done += new.len() as u64;
    }
    if done != len || crc != blob.header.original_crc {
        return Err(fs_error("decoding", nacrithfs_engine::Error::FileChecksum));
    }
    Ok(len)
}

/// A blob's payload in its backing file, read piece by piece with `pread`.
struct FilePayload {
    file: Arc<File>,
    /// Where the payload starts in the file.
    base: u64,
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
struct Nc06Blob {
    engine: Arc<Engine>,
    blob: Blob,
    index: Index,
    payload: FilePayload,
    extents: Vec<(u64, u64)>,
    /// For each of `extents`, whether it is a zero extent.
    holes: Vec<bool>,
    /// For each of `extents`, where it lies when it is in a raw frame.
    plain: Vec<Option<PlainPiece>>,
    /// One bit per frame: its checksum was checked since the blob was opened.
    checked: Vec<AtomicU64>,
    stored_len: u64,
    model_decodes: Arc<AtomicU64>,
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

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn is_hole(&self, i: usize) -> bool {
        self.holes.get(i).copied().unwrap_or(false)
    }

    fn is_plain(&self, i: usize) -> bool {
        matches!(self.plain.get(i), Some(Some(_)))
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
            .decode_range(&self.blob, &self.index, &self.payload, start, end, None)
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
