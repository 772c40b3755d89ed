//! Entry points for fuzzing the code that reads untrusted bytes: the NC06 container
//! parser with the binary frame decoders behind it, and the arithmetic decoder. The
//! cargo-fuzz targets in fuzz/ call them, and tests/fuzz_replay.rs runs them on stable
//! over the seed corpus and random inputs. Each must return on any input: never panic,
//! hang or allocate without bound (a damaged blob in BACKING reaches exactly this code).
//!
//! [`structured`] builds a blob field by field from the fuzzer's bytes and serialises it,
//! so every checksum is valid and each field's value reaches the validation and the
//! index: mutated bytes almost never get past the header CRC.

use super::{
    decompress_frame, Blob, ChunkEntry, Extent, ExtentKind, Flags, FrameEntry, Header, Method,
    FRAME_SIZE,
};
use crate::codec::{fixed_sum, Cdf, Decoder, Encoder, Precision};
use crate::{Fingerprint, Window};

/// Parses `data` as a blob (header alone, then whole); for a blob that parses, walks
/// its index, every chunk stream and every frame (decompressing it), and checks that
/// serialising it gives bytes that parse back to the same blob.
pub fn container(data: &[u8]) {
    if let Ok((b, _)) = Blob::parse_header(data) {
        let _ = b.index();
    }
    let Ok(blob) = Blob::parse(data) else { return };
    let index = blob.index();
    let total: u64 = index.extents.iter().map(|e| e.len).sum();
    assert_eq!(
        total, blob.header.original_len,
        "extents do not tile the file"
    );
    for i in 0..blob.chunks.len() {
        let _ = blob.chunk_stream(&index, i);
    }
    for (i, f) in blob.frames.iter().enumerate() {
        assert!(f.raw_len as usize <= FRAME_SIZE);
        if let Ok(raw) = decompress_frame(f.method, blob.frame_bytes(&index, i), f.raw_len as usize)
        {
            assert_eq!(raw.len(), f.raw_len as usize);
        }
    }
    let again = Blob::parse(&blob.to_bytes()).expect("a parsed blob serialises to a parsable one");
    assert!(again == blob, "serialise/parse round trip changed the blob");
}

/// Decodes symbols from `data` with a CDF built from its first bytes, then encodes
/// them and decodes that again: the same symbols must come back.
pub fn decoder(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let symbols = 2 + n as usize % 254;
    if rest.len() < symbols {
        return;
    }
    let (weights, stream) = rest.split_at(symbols);
    let w: Vec<f32> = weights.iter().map(|&b| b as f32 + 1.0).collect();
    let precision = if n & 0x80 == 0 {
        Precision::DEFAULT
    } else {
        Precision::MAX
    };
    let Ok(cdf) = Cdf::from_weights(&w, fixed_sum(&w), precision) else {
        return;
    };
    let count = 8 * stream.len() + 64;
    let mut dec = Decoder::new(stream);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = dec.decode(&cdf);
        assert!(s < cdf.len());
        out.push(s);
    }
    let mut enc = Encoder::new();
    for &s in &out {
        enc.encode(&cdf, s);
    }
    let bytes = enc.finish();
    let mut dec = Decoder::new(&bytes);
    for &s in &out {
        assert_eq!(dec.decode(&cdf), s, "re-encoded symbols decode differently");
    }
}

/// Reads values from fuzzer bytes, zeros once they run out.
struct Source<'a>(&'a [u8]);

impl Source<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }

    /// A value that is often at an edge: 0, 1, small, around a limit, or the maximum.
    fn edgy(&mut self, typical: u64, limit: u64) -> u64 {
        match self.u8() % 10 {
            0 => 0,
            1 => 1,
            2 => typical,
            3 => limit.wrapping_sub(1),
            4 => limit,
            5 => limit.wrapping_add(1),
            6 => u64::MAX,
            7 => u32::MAX as u64 - self.u8() as u64 % 3,
            8 => self.u8() as u64,
            _ => self.u64(),
        }
    }

    fn edgy32(&mut self, typical: u32, limit: u32) -> u32 {
        self.edgy(typical as u64, limit as u64) as u32
    }
}

/// A blob whose fields come from `data`, with valid checksums: often consistent enough
/// to pass validation and reach the index and the frame decoders, often not.
pub fn arbitrary_blob(data: &[u8]) -> Blob {
    let mut s = Source(data);
    let consistent = s.u8() % 2 == 0;
    let n_extents = (s.u8() % 8) as usize;
    let mut extents = Vec::with_capacity(n_extents);
    let mut chunks = Vec::new();
    let mut binary = 0u64;
    for _ in 0..n_extents {
        let kind = match s.u8() % 5 {
            0 | 1 => ExtentKind::Text,
            2 | 3 => ExtentKind::Binary,
            _ => ExtentKind::Zero,
        };
        // Lengths a writer can produce (the table stores len << 2).
        let len = s.edgy(100, 64 << 20).min(super::container::MAX_ZERO_EXTENT);
        extents.push(Extent { kind, len });
        match kind {
            ExtentKind::Text => chunks.push(ChunkEntry {
                tokens: s.edgy32(30, len.min(u32::MAX as u64) as u32),
                stream_len: s.edgy32(10, 64),
                crc: s.u32(),
            }),
            ExtentKind::Binary => binary = binary.wrapping_add(len),
            ExtentKind::Zero => {}
        }
    }
    if !consistent {
        for _ in 0..s.u8() % 3 {
            chunks.push(ChunkEntry {
                tokens: s.u32(),
                stream_len: s.edgy32(10, 64),
                crc: s.u32(),
            });
        }
    }
    let mut frames = Vec::new();
    let mut left = if consistent {
        binary.min(8 * FRAME_SIZE as u64)
    } else {
        s.edgy(100, FRAME_SIZE as u64)
    };
    while left > 0 && frames.len() < 8 {
        let raw_len = if consistent {
            left.min(FRAME_SIZE as u64) as u32
        } else {
            s.edgy32(100, FRAME_SIZE as u32)
        };
        let method = Method::from_u8(s.u8() % 3).unwrap_or(Method::Raw);
        frames.push(FrameEntry {
            method,
            raw_len,
            stored_len: s.edgy32(16, 256),
            crc: s.u32(),
        });
        left = left.saturating_sub(raw_len.max(1) as u64);
    }
    let original_len = if consistent {
        extents.iter().fold(0u64, |a, e| a.wrapping_add(e.len))
    } else {
        s.u64()
    };
    let payload_len = chunks.iter().map(|c| c.stream_len as u64).sum::<u64>()
        + frames.iter().map(|f| f.stored_len as u64).sum::<u64>();
    let payload_len = if consistent {
        payload_len.min(1 << 16)
    } else {
        s.edgy(payload_len, 1 << 12).min(1 << 16)
    };
    let payload = (0..payload_len).map(|_| s.u8()).collect();
    Blob {
        header: Header {
            flags: Flags(if consistent {
                Flags::LLM | (s.u8() as u16 & Flags::KNOWN)
            } else {
                s.u32() as u16
            }),
            original_len,
            original_crc: s.u32(),
            fingerprint: Fingerprint {
                model: s.u64().to_le_bytes(),
                backend: s.u64().to_le_bytes(),
            },
            window: Window {
                ctx: s.edgy32(2048, Window::MAX_CTX),
                slide: s.edgy32(512, u32::MAX),
            },
            temperature: if consistent {
                1.0
            } else {
                f32::from_bits(s.u32())
            },
            chunk_size: s.u32(),
            precision: if s.u8() & 1 == 0 {
                Precision::DEFAULT
            } else {
                Precision::MAX
            },
        },
        extents,
        chunks,
        frames,
        payload,
    }
}

/// Serialises [`arbitrary_blob`]'s blob and runs [`container`] on it, then on copies
/// with one byte of the payload or tables changed.
pub fn structured(data: &[u8]) {
    let blob = arbitrary_blob(data);
    let bytes = blob.to_bytes();
    container(&bytes);
    if let Ok(parsed) = Blob::parse(&bytes) {
        assert!(parsed == blob, "a valid blob parsed into another blob");
    }
    let last = data.last().copied().unwrap_or(0) as usize;
    if !bytes.is_empty() {
        let mut b = bytes.clone();
        let at = last * 7919 % b.len();
        b[at] ^= 1 << (last % 8);
        container(&b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn structured_blobs_reach_validation_and_the_index() {
        // A consistent blob with one text and one binary extent parses and indexes.
        let mut reached_index = 0;
        let mut refused = 0;
        for seed in 0..2000u32 {
            let data: Vec<u8> = (0..64u32)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 13) as u8)
                .collect();
            let b = arbitrary_blob(&data);
            match Blob::parse(&b.to_bytes()) {
                Ok(_) => reached_index += 1,
                Err(super::super::FormatError::Inconsistent(_)) => refused += 1,
                Err(_) => {}
            }
            structured(&data);
        }
        assert!(
            reached_index > 20,
            "only {reached_index} generated blobs were valid"
        );
        assert!(
            refused > 20,
            "only {refused} reached the consistency checks"
        );
    }

    #[test]
    fn a_huge_slide_in_a_valid_header_is_refused_not_overflowed() {
        let mut b = arbitrary_blob(&[]);
        b.header.window = Window {
            ctx: 2048,
            slide: u32::MAX,
        };
        b.extents = vec![Extent {
            kind: ExtentKind::Text,
            len: 10,
        }];
        b.chunks = vec![ChunkEntry {
            tokens: 3,
            stream_len: 0,
            crc: 0,
        }];
        b.frames.clear();
        b.payload.clear();
        b.header.original_len = 10;
        b.header.flags = Flags(Flags::LLM);
        b.header.temperature = 1.0;
        let r = Blob::parse(&b.to_bytes());
        assert!(
            matches!(&r, Err(super::super::FormatError::Inconsistent(m)) if m.contains("window")),
            "{r:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn structured_blobs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            structured(&data);
        }
    }
}
