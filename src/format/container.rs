//! NC06 container: header, extent table, chunk table, frame table, header checksum,
//! then the payload (chunk streams, then binary frames). See docs/FORMAT.md.

use super::binary::{Method, FRAME_SIZE};
use super::varint::{self, Eof, Reader};
use crate::model::{Fingerprint, Window};

pub const MAGIC: [u8; 4] = *b"NC06";
pub const VERSION: u8 = 1;
/// Bytes that always precede the variable part of the header (magic + version).
pub const HEADER_PREFIX_LEN: usize = 5;

/// Largest text chunk a reader accepts; bounds the work a hostile blob can ask for.
const MAX_CHUNK: u64 = 64 << 20;

/// Which predictors coded the text chunks. The decoder configures itself from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::LLM, "llm"),
            (Self::NGRAM, "ngram"),
            (Self::MATCH, "match"),
            (Self::BIAS, "bias"),
            (Self::SKIP, "skip"),
            (Self::LOGMIX, "logmix"),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "{}", on.join(","))
    }
}

impl Flags {
    /// Text chunks are coded by the language model (always set by this version).
    pub const LLM: u16 = 1 << 0;
    /// Token N-gram of orders 1..4 mixed in.
    pub const NGRAM: u16 = 1 << 1;
    /// Match model (orders 4..8) mixed in.
    pub const MATCH: u16 = 1 << 2;
    /// Adaptive bias head over the vocabulary.
    pub const BIAS: u16 = 1 << 3;
    /// Confidence skip: the model is not asked when the N-gram is sure.
    pub const SKIP: u16 = 1 << 4;
    /// The parts are mixed in the log domain (geometric mixing, `model/logmix.rs`)
    /// instead of the reference's linear exponential-weights mix.
    pub const LOGMIX: u16 = 1 << 5;
    /// Bits this version understands; any other set bit is refused.
    pub const KNOWN: u16 =
        Self::LLM | Self::NGRAM | Self::MATCH | Self::BIAS | Self::SKIP | Self::LOGMIX;
    /// What compression uses unless told otherwise: the model plus the N-gram, mixed in
    /// the log domain — the only part that pays on its own (docs/BENCHMARKS.md, ablation:
    /// -4.8 % on logs, -1.3 % on source code, within 0.1 % on English prose).
    pub const DEFAULT: u16 = Self::LLM | Self::NGRAM | Self::LOGMIX;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// Everything about a blob that is not a per-extent table.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub flags: Flags,
    pub original_len: u64,
    /// CRC-32C of the whole original file.
    pub original_crc: u32,
    pub fingerprint: Fingerprint,
    pub window: Window,
    pub temperature: f32,
    /// The chunk size the writer aimed for (informational).
    pub chunk_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    Text,
    Binary,
}

/// A run of the original file, in order. Text extents map one-to-one onto chunks;
/// binary extents are concatenated into one binary stream cut into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub kind: ExtentKind,
    pub len: u64,
}

/// One independently coded text stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub tokens: u32,
    pub stream_len: u32,
    /// CRC-32C of the chunk's plaintext.
    pub crc: u32,
}

/// One classical-codec frame of the binary stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    pub method: Method,
    pub raw_len: u32,
    pub stored_len: u32,
    /// CRC-32C of the frame's raw bytes.
    pub crc: u32,
}

/// A parsed (or about to be written) NC06 blob. `payload` holds the chunk streams then
/// the frames, in table order.
#[derive(Clone, Debug, PartialEq)]
pub struct Blob {
    pub header: Header,
    pub extents: Vec<Extent>,
    pub chunks: Vec<ChunkEntry>,
    pub frames: Vec<FrameEntry>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an NC06 blob (bad magic)")]
    BadMagic,
    #[error("NC06 version {0} is not supported by this build (it reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("blob uses feature flags {0:#06x} that this build does not know")]
    UnknownFlags(u16),
    #[error("blob is truncated (in {0})")]
    Truncated(&'static str),
    #[error("blob header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    #[error("blob is inconsistent: {0}")]
    Inconsistent(String),
}

fn trunc(what: &'static str) -> impl Fn(Eof) -> FormatError {
    move |_| FormatError::Truncated(what)
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
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&h.flags.0.to_le_bytes());
        varint::put(out, h.original_len);
        out.extend_from_slice(&h.original_crc.to_le_bytes());
        out.extend_from_slice(&h.fingerprint.model);
        out.extend_from_slice(&h.fingerprint.backend);
        varint::put(out, h.window.ctx as u64);
        varint::put(out, h.window.slide as u64);
        out.extend_from_slice(&h.temperature.to_bits().to_le_bytes());
        varint::put(out, h.chunk_size as u64);
        varint::put(out, self.extents.len() as u64);
        varint::put(out, self.chunks.len() as u64);
        varint::put(out, self.frames.len() as u64);
        for e in &self.extents {
            varint::put(out, (e.len << 1) | (e.kind == ExtentKind::Binary) as u64);
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

    /// Parses and validates a blob. Never panics on any input.
    pub fn parse(data: &[u8]) -> Result<Blob, FormatError> {
        let (mut blob, header_len) = Self::parse_header(data)?;
        let payload_len: u64 = blob.chunks.iter().map(|c| c.stream_len as u64).sum::<u64>()
            + blob.frames.iter().map(|f| f.stored_len as u64).sum::<u64>();
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
        let mut r = Reader::new(data);
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
        let version = r.u8().map_err(trunc("version"))?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let t = trunc("header");
        let flags = Flags(r.u16().map_err(&t)?);
        let original_len = r.varint().map_err(&t)?;
        let original_crc = r.u32().map_err(&t)?;
        let mut fingerprint = Fingerprint::default();
        fingerprint.model.copy_from_slice(r.bytes(8).map_err(&t)?);
        fingerprint.backend.copy_from_slice(r.bytes(8).map_err(&t)?);
        let ctx = r.varint().map_err(&t)?;
        let slide = r.varint().map_err(&t)?;
        let temperature = f32::from_bits(r.u32().map_err(&t)?);
        let chunk_size = r.varint().map_err(&t)?;
        let n_extents = r.varint().map_err(&t)?;
        let n_chunks = r.varint().map_err(&t)?;
        let n_frames = r.varint().map_err(&t)?;
        // Every table entry takes at least one byte: bound the counts before allocating.
        let left = r.remaining() as u64;
        if n_extents > left || n_chunks > left || n_frames > left {
            return Err(FormatError::Truncated("tables"));
        }
        let t = trunc("tables");
        let mut extents = Vec::with_capacity(n_extents as usize);
        for _ in 0..n_extents {
            let v = r.varint().map_err(&t)?;
            let kind = if v & 1 == 1 {
                ExtentKind::Binary
            } else {
                ExtentKind::Text
            };
            extents.push(Extent { kind, len: v >> 1 });
        }
        let mut chunks = Vec::with_capacity(n_chunks as usize);
        for _ in 0..n_chunks {
            let tokens = r.varint().map_err(&t)?;
            let stream_len = r.varint().map_err(&t)?;
            let crc = r.u32().map_err(&t)?;
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
            let m = r.u8().map_err(&t)?;
            let method = Method::from_u8(m)
                .ok_or_else(|| FormatError::Inconsistent(format!("unknown frame method {m}")))?;
            let raw_len = r.varint().map_err(&t)?;
            let stored_len = r.varint().map_err(&t)?;
            let crc = r.u32().map_err(&t)?;
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
        let stored_crc = r.u32().map_err(trunc("header checksum"))?;
        if crc32c::crc32c(&data[..body_end]) != stored_crc {
            return Err(FormatError::HeaderChecksum);
        }
        // Only now, with the header known to be intact, interpret what it says.
        if flags.0 & !Flags::KNOWN != 0 || !flags.has(Flags::LLM) {
            return Err(FormatError::UnknownFlags(flags.0));
        }
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

/// Positions derived from the tables; see [`Blob::index`].
#[derive(Clone, Debug)]
pub struct Index {
    pub extents: Vec<IndexedExtent>,
    /// Payload offset of each chunk stream.
    pub chunk_offsets: Vec<u64>,
    /// Payload offset of each frame.
    pub frame_offsets: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
pub struct IndexedExtent {
    pub orig_offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
    pub chunk: usize,
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
