//! Files of any size a window at a time: the compression that writes a blob through
//! scratch files and reads it back, and the decoding that writes a file out as its
//! windows decode. The mount, `nacrithfs compress/decompress` and `pack` all use these,
//! so what any of them holds is a few windows, whatever the file's size.

use crate::blob::FilePayload;
use crate::fs_error;
use nacrithfs_engine::{Coded, CompressOptions, Engine, FrameSource, Stats};
use nacrithfs_fs::store::codec::{BlobOut, Meter, Source};
use nacrithfs_fs::{FsError, FsResult};
use nc06::format::{Blob, FormatError, Index, Payload};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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

/// A stretch of a file compressed again, in file order: the stretches tile the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stretch {
    /// Text chunk `chunk` of the old blob, `len` bytes that the change left alone:
    /// its stream is copied as it is.
    Kept { chunk: usize, len: u64 },
    /// Bytes of the file, read and coded a window at a time.
    New(Range<u64>),
}

/// The old blob whose chunks a compression copies.
pub(crate) struct Base<'a> {
    pub(crate) blob: &'a Blob,
    pub(crate) index: &'a Index,
    pub(crate) payload: &'a dyn Payload,
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
        let all = [Stretch::New(0..src.len)];
        self.compress_stretches(src, &all, None, out, meter, progress)
    }

    /// [`Streamed::compress`] of a file made of `stretches`: the kept chunks' streams
    /// are copied from `base` (which the caller checked the engine
    /// [`can_reuse`](Engine::can_reuse)), the new stretches read from `src` and coded a
    /// window at a time, each as if the file ended at its end. What it holds is a few
    /// windows, whatever the size of the file or of the old blob.
    pub(crate) fn compress_stretches(
        &self,
        src: &Source<'_>,
        stretches: &[Stretch],
        base: Option<&Base<'_>>,
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
        for stretch in stretches {
            match stretch {
                Stretch::Kept { chunk, len } => {
                    let base = base.ok_or_else(|| internal("a kept chunk without its blob"))?;
                    let stream = enc
                        .keep_chunk(base.blob, base.index, base.payload, *chunk, *len)
                        .map_err(|e| fs_error("copying a chunk", e))?;
                    streams.append(&stream)?;
                    meter.add(*len);
                }
                Stretch::New(range) => {
                    let mut off = range.start;
                    while off < range.end {
                        let want = (range.end - off).min(window.max(1) as u64);
                        let data = (src.read)(off, want)?;
                        // A stretch's last window is taken whole: a kept chunk, or the
                        // file's end, follows it.
                        let coded = if off + want == range.end {
                            enc.push_stretch_end(&data, progress)
                        } else {
                            enc.push(&data, false, progress)
                        }
                        .map_err(|e| fs_error("compressing", e))?;
                        spool(&coded, &mut streams, &mut frames)?;
                        off += coded.consumed as u64;
                        meter.add(coded.consumed as u64);
                    }
                }
            }
        }
        // The end of the file: the binary bytes held short of a frame go in the last.
        let coded = enc
            .push(&[], true, progress)
            .map_err(|e| fs_error("compressing", e))?;
        spool(&coded, &mut streams, &mut frames)?;
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
            "compressed {} bytes in windows of {window}: {} chunks ({} copied), {} frames, {} bytes",
            src.len,
            stats.chunks,
            stats.kept_chunks,
            stats.frames,
            stats.compressed
        );
        Ok(stats)
    }
}

/// Appends a window's streams and frames to their spools.
fn spool(coded: &Coded, streams: &mut Spool, frames: &mut Spool) -> FsResult<()> {
    for s in &coded.streams {
        streams.append(s)?;
    }
    for f in &coded.frames {
        frames.append(f)?;
    }
    Ok(())
}

/// An error that is the program's, not the input's.
fn internal(what: &'static str) -> FsError {
    fs_error("compressing", nacrithfs_engine::Error::Internal(what))
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

/// The first bytes read of a blob when it is opened: its header and tables are a few
/// bytes per 16 KiB chunk or 1 MiB frame, so this covers files of many MB at once.
const HEADER_READ: usize = 64 << 10;

/// Reads and validates the header and tables of the blob in `file` (reading more while
/// they go on) and checks that the file holds the payload they describe. Returns the blob without
/// its payload and where the payload starts.
pub fn read_header(file: &File) -> FsResult<(Blob, usize)> {
    read_header_bytes(file).map(|(blob, bytes)| (blob, bytes.len()))
}

/// [`read_header`], giving the header's bytes (their length is where the payload
/// starts).
pub(crate) fn read_header_bytes(file: &File) -> FsResult<(Blob, Vec<u8>)> {
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
                buf.truncate(header_len);
                return Ok((blob, buf));
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
