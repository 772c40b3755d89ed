//! NC06 container: header, extent table, chunk table, frame table, header checksum,
//! then the payload (chunk streams, then binary frames). See docs/FORMAT.md.

use super::binary::{Method, FRAME_SIZE};
use super::varint::{self, Reader};
use super::Flags;
use crate::codec::Precision;
use crate::{Fingerprint, Window};

/// The first four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"NC06";
/// The newest container version this build writes and reads. A writer gives a blob
/// the lowest version that can hold it (see [`Blob::version`]), so a blob without
/// zero extents is a version 1 blob, byte for byte as before version 2 existed, and
/// only a coder precision other than 2^24 makes a version 3 blob.
pub const VERSION: u8 = 3;
/// Bytes that always precede the variable part of the header (magic + version).
pub const HEADER_PREFIX_LEN: usize = 5;

/// Largest text chunk a reader accepts; bounds the work a hostile blob can ask for.
const MAX_CHUNK: u64 = 64 << 20;

/// Everything about a blob that is not a per-extent table.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The predictors that coded the text.
    pub flags: Flags,
    /// Length of the original file.
    pub original_len: u64,
    /// CRC-32C of the whole original file.
    pub original_crc: u32,
    /// The model and build that coded the text.
    pub fingerprint: Fingerprint,
    /// The context window of every text stream.
    pub window: Window,
    /// Softmax temperature.
    pub temperature: f32,
    /// The chunk size the writer aimed for (informational).
    pub chunk_size: u32,
    /// The total of the coder's CDFs (recorded from version 3; 2^24 before).
    pub precision: Precision,
}

/// What an extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Text coded by the model, one chunk.
    Text,
    /// Bytes in the binary stream, stored in classical frames.
    Binary,
    /// Zeros (a hole of a sparse file): nothing is stored (version 2).
    Zero,
}

/// The longest zero extent a writer makes: its length shifted by two stays in a u64.
pub const MAX_ZERO_EXTENT: u64 = 1 << 61;

/// A run of the original file, in order. Text extents map one-to-one onto chunks;
/// binary extents are concatenated into one binary stream cut into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// What it holds.
    pub kind: ExtentKind,
    /// Its length in the original file.
    pub len: u64,
}

/// One independently coded text stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Tokens the stream codes.
    pub tokens: u32,
    /// Bytes of the arithmetic-coded stream.
    pub stream_len: u32,
    /// CRC-32C of the chunk's plaintext.
    pub crc: u32,
}

/// One classical-codec frame of the binary stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    /// How it is stored.
    pub method: Method,
    /// Bytes it expands to.
    pub raw_len: u32,
    /// Bytes it takes in the payload.
    pub stored_len: u32,
    /// CRC-32C of the frame's raw bytes.
    pub crc: u32,
}

/// A parsed (or about to be written) NC06 blob. `payload` holds the chunk streams then
/// the frames, in table order.
#[derive(Clone, Debug, PartialEq)]
pub struct Blob {
    /// Everything that is not a table.
    pub header: Header,
    /// The runs of the original file, in order.
    pub extents: Vec<Extent>,
    /// One entry per text extent.
    pub chunks: Vec<ChunkEntry>,
    /// The frames of the binary stream.
    pub frames: Vec<FrameEntry>,
    /// Chunk streams, then frames.
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid blob. Parsing never panics: every malformed input is one of these.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes do not start with `NC06`.
    #[error("not an NC06 blob (bad magic)")]
    BadMagic,
    /// A container version this build cannot read.
    #[error("NC06 version {0} is not supported by this build (it reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// Predictor flags this build does not know (or without the model).
    #[error("blob uses feature flags {0:#06x} that this build does not know")]
    UnknownFlags(u16),
    /// The blob ends inside the named part.
    #[error("blob is truncated (in {0})")]
    Truncated(&'static str),
    /// The header's CRC-32C does not match.
    #[error("blob header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    /// A number that is not a canonical LEB128 of 64 bits.
    #[error("blob has a malformed number in its {section}: {why}")]
    BadVarint {
        /// The part of the blob it is in.
        section: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Tables that contradict each other or the header.
    #[error("blob is inconsistent: {0}")]
    Inconsistent(String),
}

impl Blob {
    /// Serialises the blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.extents.len() * 4 + self.chunks.len() * 10 + self.payload.len(),
        );
        self.write_header(&mut out);
        out.extend_from_slice(&self.payload);
        out
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        let version = self.version();
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.extend_from_slice(&h.flags.0.to_le_bytes());
        varint::put(out, h.original_len);
        out.extend_from_slice(&h.original_crc.to_le_bytes());
        out.extend_from_slice(&h.fingerprint.model);
        out.extend_from_slice(&h.fingerprint.backend);
        varint::put(out, h.window.ctx as u64);
        varint::put(out, h.window.slide as u64);
        out.extend_from_slice(&h.temperature.to_bits().to_le_bytes());
        varint::put(out, h.chunk_size as u64);
        if version >= 3 {
            out.push(h.precision.bits() as u8);
        }
        varint::put(out, self.extents.len() as u64);
        varint::put(out, self.chunks.len() as u64);
        varint::put(out, self.frames.len() as u64);
        for e in &self.extents {
            let v = match (version, e.kind) {
                (1, ExtentKind::Text) => e.len << 1,
                (1, _) => (e.len << 1) | 1,
                (_, ExtentKind::Text) => e.len << 2,
                (_, ExtentKind::Binary) => (e.len << 2) | 1,
                (_, ExtentKind::Zero) => (e.len << 2) | 2,
            };
            varint::put(out, v);
        }
        for c in &self.chunks {
            varint::put(out, c.tokens as u64);
            varint::put(out, c.stream_len as u64);
            out.extend_from_slice(&c.crc.to_le_bytes());
        }
        for f in &self.frames {
            out.push(f.method as u8);
            varint::put(out, f.raw_len as u64);
            varint::put(out, f.stored_len as u64);
            out.extend_from_slice(&f.crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(out);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// The version this blob is written with: 3 if its coder precision is not 2^24,
    /// else 2 if it has a zero extent, else 1.
    pub fn version(&self) -> u8 {
        if self.header.precision != Precision::DEFAULT {
            3
        } else if self.extents.iter().any(|e| e.kind == ExtentKind::Zero) {
            2
        } else {
            1
        }
    }

    /// Parses and validates a blob. Never panics on any input.
    pub fn parse(data: &[u8]) -> Result<Blob, FormatError> {
        let (mut blob, header_len) = Self::parse_header(data)?;
        let payload_len = blob.payload_len();
        let have = (data.len() - header_len) as u64;
        if have < payload_len {
            return Err(FormatError::Truncated("payload"));
        }
        if have > payload_len {
            return Err(FormatError::Inconsistent(format!(
                "{} bytes of trailing garbage",
                have - payload_len
            )));
        }
        blob.payload = data[header_len..].to_vec();
        Ok(blob)
    }

    /// Parses and validates only the header and tables (the payload is left empty).
    /// Returns the blob and the header's length, where the payload starts.
    pub fn parse_header(data: &[u8]) -> Result<(Blob, usize), FormatError> {
        let mut r = Reader::new(data, "magic");
        let magic = r.bytes(4).map_err(|_| {
            if data.is_empty() || MAGIC.starts_with(data) {
                FormatError::Truncated("magic")
            } else {
                FormatError::BadMagic
            }
        })?;
        if magic != MAGIC {
            return Err(FormatError::BadMagic);
        }
        r.section("version");
        let version = r.u8()?;
        if !(1..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        r.section("header");
        let flags = Flags(r.u16()?);
        let original_len = r.varint()?;
        let original_crc = r.u32()?;
        let mut fingerprint = Fingerprint::default();
        fingerprint.model.copy_from_slice(r.bytes(8)?);
        fingerprint.backend.copy_from_slice(r.bytes(8)?);
        let ctx = r.varint()?;
        let slide = r.varint()?;
        let temperature = f32::from_bits(r.u32()?);
        let chunk_size = r.varint()?;
        let precision_bits = if version >= 3 { Some(r.u8()?) } else { None };
        let n_extents = r.varint()?;
        let n_chunks = r.varint()?;
        let n_frames = r.varint()?;
        // Every table entry takes at least one byte: bound the counts before allocating.
        let left = r.remaining() as u64;
        if n_extents > left || n_chunks > left || n_frames > left {
            return Err(FormatError::Truncated("tables"));
        }
        r.section("tables");
        let mut extents = Vec::with_capacity(n_extents as usize);
        for _ in 0..n_extents {
            let v = r.varint()?;
            let (kind, len) = match (version, v & 3) {
                (1, k) => (
                    if k & 1 == 1 {
                        ExtentKind::Binary
                    } else {
                        ExtentKind::Text
                    },
                    v >> 1,
                ),
                (_, 0) => (ExtentKind::Text, v >> 2),
                (_, 1) => (ExtentKind::Binary, v >> 2),
                (_, 2) => (ExtentKind::Zero, v >> 2),
                (_, _) => {
                    return Err(FormatError::Inconsistent("unknown extent kind 3".into()));
                }
            };
            extents.push(Extent { kind, len });
        }
        let mut chunks = Vec::with_capacity(n_chunks as usize);
        for _ in 0..n_chunks {
            let tokens = r.varint()?;
            let stream_len = r.varint()?;
            let crc = r.u32()?;
            if tokens > u32::MAX as u64 || stream_len > u32::MAX as u64 {
                return Err(FormatError::Inconsistent("chunk entry out of range".into()));
            }
            chunks.push(ChunkEntry {
                tokens: tokens as u32,
                stream_len: stream_len as u32,
                crc,
            });
        }
        let mut frames = Vec::with_capacity(n_frames as usize);
        for _ in 0..n_frames {
            let m = r.u8()?;
            let method = Method::from_u8(m)
                .ok_or_else(|| FormatError::Inconsistent(format!("unknown frame method {m}")))?;
            let raw_len = r.varint()?;
            let stored_len = r.varint()?;
            let crc = r.u32()?;
            if raw_len > FRAME_SIZE as u64 || stored_len > u32::MAX as u64 {
                return Err(FormatError::Inconsistent("frame entry out of range".into()));
            }
            frames.push(FrameEntry {
                method,
                raw_len: raw_len as u32,
                stored_len: stored_len as u32,
                crc,
            });
        }
        let body_end = r.pos();
        r.section("header checksum");
        let stored_crc = r.u32()?;
        if crc32c::crc32c(&data[..body_end]) != stored_crc {
            return Err(FormatError::HeaderChecksum);
        }
        // Only now, with the header known to be intact, interpret what it says.
        if flags.0 & !Flags::KNOWN != 0 || !flags.has(Flags::LLM) {
            return Err(FormatError::UnknownFlags(flags.0));
        }
        let precision = match precision_bits {
            None => Precision::DEFAULT,
            Some(b) => Precision::new(b).ok_or_else(|| {
                FormatError::Inconsistent(format!("unsupported coder precision 2^{b}"))
            })?,
        };
        let window = Window {
            ctx: ctx.min(u32::MAX as u64) as u32,
            slide: slide.min(u32::MAX as u64) as u32,
        };
        let header = Header {
            flags,
            original_len,
            original_crc,
            fingerprint,
            window,
            temperature,
            chunk_size: chunk_size.min(u32::MAX as u64) as u32,
            precision,
        };
        let blob = Blob {
            header,
            extents,
            chunks,
            frames,
            payload: Vec::new(),
        };
        blob.validate()?;
        Ok((blob, r.pos()))
    }

    fn validate(&self) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::Inconsistent(m));
        let h = &self.header;
        if !self.chunks.is_empty() && !h.window.is_valid() {
            return bad(format!(
                "invalid context window {}/{}",
                h.window.ctx, h.window.slide
            ));
        }
        if !(h.temperature.is_finite() && h.temperature > 0.0) {
            return bad(format!("invalid temperature {}", h.temperature));
        }
        let mut total = 0u64;
        let mut binary = 0u64;
        let mut text = 0usize;
        for e in &self.extents {
            if e.len == 0 {
                return bad("empty extent".into());
            }
            total = total
                .checked_add(e.len)
                .ok_or_else(|| FormatError::Inconsistent("extent lengths overflow".into()))?;
            match e.kind {
                ExtentKind::Binary => binary += e.len,
                ExtentKind::Zero => {}
                ExtentKind::Text => {
                    let c = self.chunks.get(text).ok_or_else(|| {
                        FormatError::Inconsistent("more text extents than chunks".into())
                    })?;
                    if e.len > MAX_CHUNK || c.tokens as u64 > e.len {
                        return bad(format!(
                            "text chunk {text} claims {} tokens for {} bytes",
                            c.tokens, e.len
                        ));
                    }
                    text += 1;
                }
            }
        }
        if text != self.chunks.len() {
            return bad(format!(
                "{} chunks for {text} text extents",
                self.chunks.len()
            ));
        }
        if total != h.original_len {
            return bad(format!(
                "extents cover {total} bytes, header says {}",
                h.original_len
            ));
        }
        let frame_raw: u64 = self.frames.iter().map(|f| f.raw_len as u64).sum();
        if frame_raw != binary {
            return bad(format!(
                "binary extents hold {binary} bytes, frames {frame_raw}"
            ));
        }
        let full = self.frames.len().saturating_sub(1);
        if self.frames[..full]
            .iter()
            .any(|f| f.raw_len as usize != FRAME_SIZE)
            || self.frames.last().is_some_and(|f| f.raw_len == 0)
        {
            return bad("binary frames are not cut at the frame size".into());
        }
        Ok(())
    }

    /// Where every extent lives: its offset in the original file, and its chunk (text)
    /// or its offset in the binary stream (binary).
    pub fn index(&self) -> Index {
        let mut items = Vec::with_capacity(self.extents.len());
        let (mut orig, mut chunk, mut bin) = (0u64, 0usize, 0u64);
        for e in &self.extents {
            match e.kind {
                ExtentKind::Text => {
                    items.push(IndexedExtent {
                        orig_offset: orig,
                        len: e.len,
                        kind: e.kind,
                        chunk,
                        binary_offset: 0,
                    });
                    chunk += 1;
                }
                ExtentKind::Binary => {
                    items.push(IndexedExtent {
                        orig_offset: orig,
                        len: e.len,
                        kind: e.kind,
                        chunk: 0,
                        binary_offset: bin,
                    });
                    bin += e.len;
                }
                ExtentKind::Zero => items.push(IndexedExtent {
                    orig_offset: orig,
                    len: e.len,
                    kind: e.kind,
                    chunk: 0,
                    binary_offset: 0,
                }),
            }
            orig += e.len;
        }
        let mut chunk_offsets = Vec::with_capacity(self.chunks.len());
        let mut off = 0u64;
        for c in &self.chunks {
            chunk_offsets.push(off);
            off += c.stream_len as u64;
        }
        let mut frame_offsets = Vec::with_capacity(self.frames.len());
        for f in &self.frames {
            frame_offsets.push(off);
            off += f.stored_len as u64;
        }
        Index {
            extents: items,
            chunk_offsets,
            frame_offsets,
        }
    }

    /// Bytes of payload the tables describe: every chunk stream and frame.
    pub fn payload_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.stream_len as u64).sum::<u64>()
            + self.frames.iter().map(|f| f.stored_len as u64).sum::<u64>()
    }

    /// The stored stream of chunk `i`.
    pub fn chunk_stream<'a>(&'a self, index: &Index, i: usize) -> &'a [u8] {
        let start = index.chunk_offsets[i] as usize;
        &self.payload[start..start + self.chunks[i].stream_len as usize]
    }

    /// The stored bytes of frame `i`.
    pub fn frame_bytes<'a>(&'a self, index: &Index, i: usize) -> &'a [u8] {
        let start = index.frame_offsets[i] as usize;
        &self.payload[start..start + self.frames[i].stored_len as usize]
    }
}

/// Where a blob's payload is: in memory, or in its file, read piece by piece so that
/// decoding part of a large blob never holds all of it.
pub trait Payload: Sync {
    /// The `len` bytes at `offset` of the payload (a chunk stream or a frame).
    fn read(&self, offset: u64, len: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>>;
}

impl Payload for Vec<u8> {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .map(std::borrow::Cow::Borrowed)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
}

/// Positions derived from the tables; see [`Blob::index`].
#[derive(Clone, Debug)]
pub struct Index {
    /// Every extent, in file order.
    pub extents: Vec<IndexedExtent>,
    /// Payload offset of each chunk stream.
    pub chunk_offsets: Vec<u64>,
    /// Payload offset of each frame.
    pub frame_offsets: Vec<u64>,
}

/// An extent with its position in the file and in the payload.
#[derive(Clone, Copy, Debug)]
pub struct IndexedExtent {
    /// Offset in the original file.
    pub orig_offset: u64,
    /// Length.
    pub len: u64,
    /// What it holds.
    pub kind: ExtentKind,
    /// Its chunk (text extents).
    pub chunk: usize,
    /// Its offset in the binary stream (binary extents).
    pub binary_offset: u64,
}

impl Index {
    /// Indices of the extents that overlap `[start, end)`.
    pub fn overlapping(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        let first = self
            .extents
            .partition_point(|e| e.orig_offset + e.len <= start);
        let last = self.extents.partition_point(|e| e.orig_offset < end);
        first..last.max(first)
    }

    /// The smallest independently decodable pieces of the file, as `(offset, len)` in
    /// order, tiling it: every text extent whole (one coded stream), binary extents cut
    /// where a frame of the binary stream ends, every zero extent whole (a reader
    /// serves it without decoding: see [`Index::holes`]). A reader that caches pieces
    /// never decompresses a frame for bytes outside it.
    pub fn pieces(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.extents.len() + self.frame_offsets.len());
        self.each_piece(|offset, len, _, _| out.push((offset, len)));
        out
    }

    /// For each of [`Index::pieces`], its kind.
    pub fn kinds(&self) -> Vec<ExtentKind> {
        let mut out = Vec::with_capacity(self.extents.len() + self.frame_offsets.len());
        self.each_piece(|_, _, kind, _| out.push(kind));
        out
    }

    /// For each of [`Index::pieces`], its chunk when it is text.
    pub fn piece_chunks(&self) -> Vec<Option<usize>> {
        let mut out = Vec::with_capacity(self.extents.len() + self.frame_offsets.len());
        for e in &self.extents {
            match e.kind {
                ExtentKind::Text => out.push(Some(e.chunk)),
                ExtentKind::Zero => out.push(None),
                ExtentKind::Binary => self.each_frame_piece(e, |_, _, _| out.push(None)),
            }
        }
        out
    }

    /// For each of [`Index::pieces`], the offset of its first byte in the binary
    /// stream when it is binary: it lies in frame `offset / FRAME_SIZE`, which holds
    /// it whole.
    pub fn binary_offsets(&self) -> Vec<Option<u64>> {
        let mut out = Vec::with_capacity(self.extents.len() + self.frame_offsets.len());
        self.each_piece(|_, _, _, at| out.push(at));
        out
    }

    /// Calls `f(offset, len, kind, binary_offset)` for each of [`Index::pieces`], in
    /// order; `binary_offset` is set for binary pieces.
    fn each_piece(&self, mut f: impl FnMut(u64, u64, ExtentKind, Option<u64>)) {
        for e in &self.extents {
            match e.kind {
                ExtentKind::Text | ExtentKind::Zero => f(e.orig_offset, e.len, e.kind, None),
                ExtentKind::Binary => {
                    self.each_frame_piece(e, |offset, n, at| f(offset, n, e.kind, Some(at)))
                }
            }
        }
    }

    /// The pieces of binary extent `e`: (offset, length, offset in the binary stream)
    /// of each part of it that lies in one frame.
    fn each_frame_piece(&self, e: &IndexedExtent, mut f: impl FnMut(u64, u64, u64)) {
        let frame = super::FRAME_SIZE as u64;
        let mut done = 0;
        while done < e.len {
            let at = e.binary_offset + done;
            let n = (frame - at % frame).min(e.len - done);
            f(e.orig_offset + done, n, at);
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Blob {
        Blob {
            header: Header {
                flags: Flags(Flags::LLM),
                original_len: 110,
                original_crc: 0xdead_beef,
                fingerprint: Fingerprint {
                    model: [1; 8],
                    backend: [2; 8],
                },
                window: Window::default(),
                temperature: 1.0,
                chunk_size: 8192,
                precision: Precision::DEFAULT,
            },
            extents: vec![
                Extent {
                    kind: ExtentKind::Text,
                    len: 100,
                },
                Extent {
                    kind: ExtentKind::Binary,
                    len: 10,
                },
            ],
            chunks: vec![ChunkEntry {
                tokens: 30,
                stream_len: 3,
                crc: 7,
            }],
            frames: vec![FrameEntry {
                method: Method::Raw,
                raw_len: 10,
                stored_len: 10,
                crc: 9,
            }],
            payload: vec![5; 13],
        }
    }

    #[test]
    fn roundtrip_and_index() {
        let b = sample();
        let bytes = b.to_bytes();
        let p = Blob::parse(&bytes).unwrap();
        assert_eq!(p, b);
        let idx = p.index();
        assert_eq!(idx.overlapping(0, 1), 0..1);
        assert_eq!(idx.overlapping(99, 101), 0..2);
        assert_eq!(idx.overlapping(100, 110), 1..2);
        assert_eq!(idx.frame_offsets, vec![3]);
    }

    #[test]
    fn pieces_cut_binary_at_frame_ends_and_keep_text_whole() {
        let f = crate::format::FRAME_SIZE as u64;
        let ext = |orig_offset, len, kind, binary_offset| IndexedExtent {
            orig_offset,
            len,
            kind,
            chunk: 0,
            binary_offset,
        };
        // text 0..100, binary that starts 10 bytes before a frame end and runs 2.5
        // frames, text, then binary continuing the stream.
        let idx = Index {
            extents: vec![
                ext(0, 100, ExtentKind::Text, 0),
                ext(100, 10 + 2 * f + f / 2, ExtentKind::Binary, f - 10),
                ext(110 + 2 * f + f / 2, 7, ExtentKind::Text, 0),
                ext(117 + 2 * f + f / 2, f, ExtentKind::Binary, 3 * f + f / 2),
            ],
            chunk_offsets: vec![],
            frame_offsets: vec![],
        };
        let p = idx.pieces();
        assert_eq!(
            p,
            vec![
                (0, 100),
                (100, 10),
                (110, f),
                (110 + f, f),
                (110 + 2 * f, f / 2),
                (110 + 2 * f + f / 2, 7),
                (117 + 2 * f + f / 2, f / 2),
                (117 + 3 * f, f / 2),
            ]
        );
        assert_eq!(
            idx.binary_offsets(),
            vec![
                None,
                Some(f - 10),
                Some(f),
                Some(2 * f),
                Some(3 * f),
                None,
                Some(3 * f + f / 2),
                Some(4 * f),
            ]
        );
        // They tile the file.
        let mut at = 0;
        for (o, l) in &p {
            assert_eq!(*o, at);
            at += l;
        }
        assert_eq!(sample().index().pieces(), vec![(0, 100), (100, 10)]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            assert!(
                Blob::parse(&bytes[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn every_header_bit_flip_is_caught() {
        let bytes = sample().to_bytes();
        let header_len = bytes.len() - 13;
        for i in 0..header_len {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Blob::parse(&b).is_err(),
                    "flip at byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn wrong_magic_and_version() {
        assert_eq!(Blob::parse(b"PK\x03\x04rest"), Err(FormatError::BadMagic));
        assert_eq!(Blob::parse(b"NC0"), Err(FormatError::Truncated("magic")));
        assert_eq!(
            Blob::parse(b"NC06\x09"),
            Err(FormatError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn zero_extents_make_a_version_2_blob_and_nothing_else_does() {
        let b = sample();
        assert_eq!(b.to_bytes()[4], 1, "no zero extent: version 1, as before");
        let mut z = sample();
        z.extents.insert(
            1,
            Extent {
                kind: ExtentKind::Zero,
                len: 1 << 40,
            },
        );
        z.header.original_len += 1 << 40;
        let bytes = z.to_bytes();
        assert_eq!(bytes[4], 2);
        assert_eq!(Blob::parse(&bytes).unwrap(), z);
        let idx = z.index();
        assert_eq!(
            idx.pieces(),
            vec![(0, 100), (100, 1 << 40), (100 + (1 << 40), 10)]
        );
        assert_eq!(
            idx.kinds()
                .iter()
                .map(|&k| k == ExtentKind::Zero)
                .collect::<Vec<_>>(),
            vec![false, true, false]
        );
        assert_eq!(
            idx.extents[2].binary_offset, 0,
            "zeros take no binary bytes"
        );
        // Version 1 has no zero extents: its tag bit is the binary flag alone.
        let mut v1 = b.to_bytes();
        v1[4] = 2;
        assert!(
            Blob::parse(&v1).is_err(),
            "a version change is covered by the CRC"
        );
    }

    #[test]
    fn a_precision_other_than_2_24_makes_a_version_3_blob() {
        let mut b = sample();
        b.header.precision = Precision::MAX;
        let bytes = b.to_bytes();
        assert_eq!(bytes[4], 3);
        assert_eq!(Blob::parse(&bytes).unwrap(), b);
        assert_eq!(bytes.len(), sample().to_bytes().len() + 1, "one byte more");
        // With zero extents too, the extents keep version 2's encoding.
        b.extents.insert(
            1,
            Extent {
                kind: ExtentKind::Zero,
                len: 4096,
            },
        );
        b.header.original_len += 4096;
        assert_eq!(Blob::parse(&b.to_bytes()).unwrap(), b);
        // A precision the coder does not support is refused, even under a valid checksum.
        let crc_at = bytes.len() - 13 - 4; // the payload is 13 bytes
        let refused = (5..crc_at).any(|i| {
            let mut t = bytes.clone();
            t[i] = 29;
            let crc = crc32c::crc32c(&t[..crc_at]);
            t[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
            matches!(Blob::parse(&t), Err(FormatError::Inconsistent(m)) if m.contains("precision 2^29"))
        });
        assert!(refused, "no byte of the header reads as precision 29");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Blob::parse(&data);
            let mut d = b"NC06\x01".to_vec();
            d.extend_from_slice(&data);
            let _ = Blob::parse(&d);
        }

        #[test]
        fn mutated_blobs_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let mut bytes = sample().to_bytes();
            let n = bytes.len();
            bytes[pos % n] = val;
            let _ = Blob::parse(&bytes);
        }
    }
}
