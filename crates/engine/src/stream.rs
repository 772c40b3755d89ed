//! Compressing a file of any size in bounded memory. The caller pushes the file a
//! window at a time; each window is segmented, coded and verified on its own, and
//! its coded streams and binary frames come back at once, for the caller to spool.
//! Only the tables (a few bytes per 16 KiB chunk or 1 MiB frame) and one partial
//! frame stay between windows. Once the last window is in, [`StreamEncoder::finish`]
//! gives the header, which goes before the streams and then the frames (the payload's
//! order): the caller writes the three in that order.
//!
//! The bytes of a blob depend on the window (a text run that crosses a window's end
//! is cut there, as a chunk of its own), never on anything else: the format is the
//! same, and so is every reader.

use super::pipeline::{
    demote_pieces, frames_of, joins, worse_than_classical, CompressOptions, FrameSource, Frames,
    Piece, Stats,
};
use super::{CodedStream, Engine, Progress, TokenStream};
use crate::{Error, Result};
use nc06::format::{Blob, ChunkEntry, Extent, ExtentKind, FrameEntry, Index, Payload, FRAME_SIZE};
use std::time::Instant;

/// The binary bytes held back at a window's end, so that a short text run cut there is
/// segmented again with what follows it.
const BINARY_HOLD: usize = 4096;

/// What one pushed window gave.
#[derive(Debug, Default)]
pub struct Coded {
    /// Bytes of the window taken; the rest must be pushed again, first in the next window.
    pub consumed: usize,
    /// Coded text streams, in order: they go after the earlier windows' streams.
    pub streams: Vec<Vec<u8>>,
    /// Stored binary frames, in order: they go after the earlier windows' frames.
    pub frames: Vec<Vec<u8>>,
}

/// A file's blob without its payload.
#[derive(Debug)]
pub struct Streamed {
    /// The serialised header and tables: the blob's first bytes.
    pub header: Vec<u8>,
    /// The bytes of all the streams, which follow the header.
    pub stream_bytes: u64,
    /// The bytes of all the frames, which follow the streams.
    pub frame_bytes: u64,
    /// What it took.
    pub stats: Stats,
}

/// A compression fed a window at a time (see the module's documentation).
pub struct StreamEncoder<'e> {
    engine: &'e Engine,
    opts: CompressOptions,
    extents: Vec<Extent>,
    chunks: Vec<ChunkEntry>,
    frames: Vec<FrameEntry>,
    /// Binary bytes not yet in a frame (less than one frame).
    carry: Vec<u8>,
    crc: u32,
    len: u64,
    ended: bool,
    stats: Stats,
    /// Frames to take as they are when a window's binary bytes match them.
    reuse: Option<&'e dyn FrameSource>,
}

impl Engine {
    /// Starts a compression that is fed a window at a time.
    pub fn stream_encoder(&self, opts: &CompressOptions) -> StreamEncoder<'_> {
        StreamEncoder {
            engine: self,
            opts: opts.clone(),
            extents: Vec::new(),
            chunks: Vec::new(),
            frames: Vec::new(),
            carry: Vec::new(),
            crc: 0,
            len: 0,
            ended: false,
            stats: Stats::default(),
            reuse: None,
        }
    }
}

impl<'e> StreamEncoder<'e> {
    /// Takes every frame that `frames` holds (the old blob of a changed file) as it
    /// is, instead of compressing its bytes again.
    pub fn reusing_frames(mut self, frames: &'e dyn FrameSource) -> Self {
        self.reuse = Some(frames);
        self
    }
}

impl StreamEncoder<'_> {
    /// Codes the next bytes of the file; `eof` when they are its last. All of `data`
    /// is taken at the end of the file; otherwise the last text chunk (or the last few
    /// KiB of binary) may be handed back in [`Coded::consumed`], to be pushed again.
    /// With `opts.verify`, every stream and frame returned decoded back to its input.
    pub fn push(
        &mut self,
        data: &[u8],
        eof: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<Coded> {
        self.push_cut(data, eof, eof, progress)
    }

    /// [`StreamEncoder::push`] of the last bytes before a kept chunk
    /// ([`StreamEncoder::keep_chunk`]) or before the file's end: all of `data` is
    /// taken, and segmented as if the file ended there; binary bytes short of a whole
    /// frame wait for the next push, as between windows (at the end, an empty push
    /// with `eof` frames them: the blob is the same as with `data` pushed with `eof`).
    pub fn push_stretch_end(
        &mut self,
        data: &[u8],
        progress: Option<Progress<'_>>,
    ) -> Result<Coded> {
        self.push_cut(data, true, false, progress)
    }

    /// Records text chunk `k` of `base` (whose payload is `payload`), `len` bytes of
    /// plaintext, as the file's next bytes, and returns its stream, for the caller to
    /// put after the streams handed out so far: the chunk of an old blob that a change
    /// left alone, copied as it is. A chunk is coded on its own from BOS, so its stream
    /// decodes the same in any position of any blob coded as its own was; the caller
    /// checks [`Engine::can_reuse`]. It was verified when it was made, and its CRC
    /// still checks every read of it.
    pub fn keep_chunk(
        &mut self,
        base: &Blob,
        index: &Index,
        payload: &dyn Payload,
        k: usize,
        len: u64,
    ) -> Result<Vec<u8>> {
        if self.ended {
            return Err(Error::Internal(
                "a chunk kept past the end of a streamed file",
            ));
        }
        let (Some(&entry), Some(&at)) = (base.chunks.get(k), index.chunk_offsets.get(k)) else {
            return Err(Error::Internal("a kept chunk out of range"));
        };
        let l = usize::try_from(len).map_err(|_| Error::Internal("a kept chunk's length"))?;
        let stream = payload
            .read(at, entry.stream_len as usize)
            .map_err(Error::Payload)?
            .into_owned();
        self.extents.push(Extent {
            kind: ExtentKind::Text,
            len,
        });
        self.chunks.push(entry);
        self.crc = crc32c::crc32c_combine(self.crc, entry.crc, l);
        self.len += len;
        let s = &mut self.stats;
        s.text_bytes += len;
        s.stream_bytes += stream.len() as u64;
        s.tokens += entry.tokens as u64;
        s.kept_chunks += 1;
        Ok(stream)
    }

    /// Codes `data`; all of it when `take_all`, and as the file's last bytes when
    /// `eof` (which implies `take_all`).
    fn push_cut(
        &mut self,
        data: &[u8],
        take_all: bool,
        eof: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<Coded> {
        if self.ended {
            return Err(Error::Internal("pushed past the end of a streamed file"));
        }
        let engine = self.engine;
        let opts = &self.opts;
        let mut p = engine.prepare(data, opts);
        let mut take = data.len();
        if !take_all && p.pieces.len() > 1 {
            match p.pieces.last().map(|x| x.kind) {
                // Text, or zeros that may go on: whole, into the next window.
                Some(ExtentKind::Text | ExtentKind::Zero) => {
                    if let Some(last) = p.pieces.pop() {
                        if last.kind == ExtentKind::Text {
                            p.tokens.pop();
                        }
                        take = last.range.start;
                    }
                }
                Some(ExtentKind::Binary) => {
                    if let Some(last) = p.pieces.last_mut() {
                        let hold = BINARY_HOLD.min(last.range.len() - 1);
                        last.range.end -= hold;
                        take = last.range.end;
                    }
                }
                None => {}
            }
        }
        let data = &data[..take];
        let mut tokens = std::mem::take(&mut p.tokens);
        let mut pieces = std::mem::take(&mut p.pieces);
        let t0 = Instant::now();
        let mut binary = self.binary_in(data, &pieces);
        let mut full = self.frame_cut(binary.len(), eof);
        let parallel = tokens.iter().all(|t| t.0.is_empty()) && engine.model_idle();
        let reuse = self.reuse;
        let (frames, coded) = std::thread::scope(|scope| {
            let frames = scope.spawn(|| frames_of(&binary[..full], parallel, opts.verify, reuse));
            let coded = engine.encode(&tokens, opts.window, engine.predictor(opts), progress);
            (frames.join(), coded)
        });
        let mut frames = frames.map_err(|_| Error::Panicked("binary frame compressor"))??;
        let (mut coded, run) = coded?;
        self.stats.encode_secs += t0.elapsed().as_secs_f64();
        self.stats.model_secs += run.model_secs;
        self.stats.skipped += run.skipped;
        if opts.verify {
            let t1 = Instant::now();
            let back = engine.decode_back(&coded, opts, progress)?;
            if let Some(i) = (0..tokens.len()).find(|&i| back[i] != tokens[i]) {
                return Err(Error::VerifyFailed {
                    chunk: self.chunks.len() + i,
                });
            }
            self.stats.verify_secs += t1.elapsed().as_secs_f64();
        }
        // Never worse than the classical codecs, chunk by chunk: a chunk they store in
        // fewer bytes than its stream becomes binary, and the window's frames are made
        // again around it.
        if demote(data, &mut pieces, &mut tokens, &mut coded) {
            binary = self.binary_in(data, &pieces);
            full = self.frame_cut(binary.len(), eof);
            frames = frames_of(&binary[..full], parallel, opts.verify, reuse)?;
        }
        Ok(self.record(data, &pieces, &tokens, coded, frames, &binary, full, eof))
    }

    /// Where the frames of this window's binary bytes end: whole frames only, but for
    /// the last window.
    fn frame_cut(&self, binary: usize, eof: bool) -> usize {
        if eof {
            binary
        } else {
            binary / FRAME_SIZE * FRAME_SIZE
        }
    }

    /// The bytes held over from earlier windows, then this window's binary pieces.
    fn binary_in(&self, data: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut binary = self.carry.clone();
        for x in pieces.iter().filter(|x| x.kind == ExtentKind::Binary) {
            binary.extend_from_slice(&data[x.range.clone()]);
        }
        binary
    }

    /// Adds a coded window to the tables, and hands its streams and frames out.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        data: &[u8],
        pieces: &[Piece],
        tokens: &[TokenStream],
        coded: Vec<CodedStream>,
        frames: Frames,
        binary: &[u8],
        full: usize,
        eof: bool,
    ) -> Coded {
        let mut text = pieces.iter().filter(|x| x.kind == ExtentKind::Text);
        let mut streams = Vec::with_capacity(coded.len());
        for (c, t) in coded.into_iter().zip(tokens) {
            let range = text.next().map(|x| x.range.clone()).unwrap_or_default();
            self.chunks.push(ChunkEntry {
                tokens: c.tokens,
                stream_len: c.bytes.len() as u32,
                crc: crc32c::crc32c(&data[range.clone()]),
            });
            let s = &mut self.stats;
            s.text_bytes += range.len() as u64;
            s.stream_bytes += c.bytes.len() as u64;
            s.tokens += t.0.len() as u64;
            s.ideal_bits += c.ideal_bits;
            streams.push(c.bytes);
        }
        for x in pieces {
            let len = x.range.len() as u64;
            match self.extents.last_mut() {
                Some(last) if joins(last.kind, x.kind, last.len + len) => last.len += len,
                _ => self.extents.push(Extent { kind: x.kind, len }),
            }
            if x.kind == ExtentKind::Binary {
                self.stats.binary_bytes += len;
            }
        }
        let mut stored = Vec::with_capacity(frames.len());
        for (entry, bytes) in frames {
            self.frames.push(entry);
            stored.push(bytes);
        }
        self.carry = binary[full..].to_vec();
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.len += data.len() as u64;
        self.ended = eof;
        Coded {
            consumed: data.len(),
            streams,
            frames: stored,
        }
    }

    /// The header of the blob whose windows were all pushed, checked to parse back.
    pub fn finish(self) -> Result<Streamed> {
        if !self.ended || !self.carry.is_empty() {
            return Err(Error::Internal("a streamed file finished before its end"));
        }
        let mut stats = self.stats;
        stats.original = self.len;
        stats.chunks = self.chunks.len();
        stats.frames = self.frames.len();
        let blob = Blob {
            header: self.engine.header(&self.opts, self.len, self.crc),
            extents: self.extents,
            chunks: self.chunks,
            frames: self.frames,
            payload: Vec::new(),
        };
        let header = blob.to_bytes();
        let (back, header_len) = Blob::parse_header(&header)?;
        if back != blob || header_len != header.len() {
            return Err(Error::ContainerRoundTrip);
        }
        let stream_bytes = blob.chunks.iter().map(|c| c.stream_len as u64).sum();
        let frame_bytes = blob.frames.iter().map(|f| f.stored_len as u64).sum();
        stats.compressed = header.len() as u64 + stream_bytes + frame_bytes;
        Ok(Streamed {
            header,
            stream_bytes,
            frame_bytes,
            stats,
        })
    }
}

/// Turns every text chunk that zstd -19 or xz -9e stores in fewer bytes than its
/// model stream into binary (merged with its binary neighbours), dropping its tokens
/// and stream. Whether any was.
fn demote(
    data: &[u8],
    pieces: &mut Vec<Piece>,
    tokens: &mut Vec<TokenStream>,
    coded: &mut Vec<CodedStream>,
) -> bool {
    let worse = worse_than_classical(data, pieces, coded);
    if !worse.contains(&true) {
        return false;
    }
    *pieces = demote_pieces(pieces, &worse);
    let mut keep = worse.iter().map(|w| !w);
    tokens.retain(|_| keep.next().unwrap_or(true));
    let mut keep = worse.iter().map(|w| !w);
    coded.retain(|_| keep.next().unwrap_or(true));
    true
}
