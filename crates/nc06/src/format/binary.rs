//! The classical codec for binary extents: each frame of up to [`FRAME_SIZE`] bytes is
//! stored with whichever of zstd -19 and xz -9e is smaller, or raw when neither helps.
//!
//! A cheap probe comes first: zstd at its fastest level. A frame it cannot shrink by
//! 1/[`PROBE_MIN_SAVING`] is stored raw, one it shrinks by less than
//! 1/[`PROBE_RICH_SAVING`] is stored as the probe made it, and only the rest try the
//! expensive levels (random, already-compressed and nearly random data are the common
//! case for big binary files: those cost a few milliseconds per MiB instead of a
//! second).

use std::io::Read;

/// Raw bytes per binary frame. Frames are the unit of random access to binary data.
pub const FRAME_SIZE: usize = 1 << 20;

/// How a frame is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Stored as it is.
    Raw = 0,
    /// zstd.
    Zstd = 1,
    /// xz (LZMA2).
    Xz = 2,
}

impl Method {
    /// The method with table code `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<Method> {
        match v {
            0 => Some(Method::Raw),
            1 => Some(Method::Zstd),
            2 => Some(Method::Xz),
            _ => None,
        }
    }

    /// The method's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Method::Raw => "raw",
            Method::Zstd => "zstd",
            Method::Xz => "xz",
        }
    }
}

/// The probe must save at least this fraction (1/32, 3 %) for the frame to be stored
/// compressed at all. A compressed frame costs a whole-frame decode on every random
/// read that misses the cache, a raw one only its read: saving less than 3 % of
/// nearly random data (fio's buffers save 0.5 %) made random 4 KiB reads 8x slower.
/// btrfs keeps a compressed extent only when it saves a page of its 128 KiB (3 %),
/// ZFS only when it saves 12.5 %.
pub const PROBE_MIN_SAVING: usize = 32;

/// ... and this fraction (1/16, 6 %) for the expensive levels to be tried; below it the
/// probe's own output is kept. Where zstd's fastest level finds only a few percent
/// (nearly random data, such as fio's), zstd -19 and xz -9e find little more, at a
/// hundred times the cost.
pub const PROBE_RICH_SAVING: usize = 16;

/// Compresses one frame, returning the method and the stored bytes.
pub fn compress_frame(raw: &[u8]) -> (Method, Vec<u8>) {
    let mut best = (Method::Raw, raw.to_vec());
    if raw.len() < 32 {
        return best;
    }
    match zstd::bulk::compress(raw, 1) {
        Ok(p) if p.len() + raw.len() / PROBE_RICH_SAVING < raw.len() => best = (Method::Zstd, p),
        Ok(p) if p.len() + raw.len() / PROBE_MIN_SAVING < raw.len() => return (Method::Zstd, p),
        _ => return best,
    }
    if let Ok(z) = zstd::bulk::compress(raw, 19) {
        if z.len() < best.1.len() {
            best = (Method::Zstd, z);
        }
    }
    if let Some(x) = xz_9e(raw) {
        if x.len() < best.1.len() {
            best = (Method::Xz, x);
        }
    }
    best
}

/// `raw` as `xz -9e` compresses it, but with a dictionary no larger than `raw`
/// (rounded up to a power of two): -9e's 64 MiB dictionary finds nothing more in a
/// frame of 1 MiB, yet its match finder's tables cost 77 MiB per frame compressed
/// (14 MiB this way, for output of the same size), and frames are compressed on every
/// core at once.
fn xz_9e(raw: &[u8]) -> Option<Vec<u8>> {
    use xz2::stream::{Check, Filters, LzmaOptions, Stream};
    // Preset 9 with the "extreme" flag (LZMA_PRESET_EXTREME).
    let mut opts = LzmaOptions::new_preset(9 | (1 << 31)).ok()?;
    let dict = u32::try_from(raw.len()).ok()?.max(XZ_DICT_MIN);
    opts.dict_size(dict.checked_next_power_of_two()?);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc64).ok()?;
    let mut x = Vec::new();
    xz2::read::XzEncoder::new_stream(raw, stream)
        .read_to_end(&mut x)
        .ok()?;
    Some(x)
}

/// liblzma's smallest dictionary (LZMA_DICT_SIZE_MIN).
const XZ_DICT_MIN: u32 = 4096;

/// Why a binary frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stored bytes are not a valid stream of the frame's method.
    #[error("corrupt {method} stream")]
    Stream {
        /// The frame's method.
        method: &'static str,
        /// What the decompressor said.
        #[source]
        source: std::io::Error,
    },
    /// The stream decodes, to the wrong number of bytes.
    #[error("{method} frame expands to {got} bytes, expected {want}")]
    Length {
        /// The frame's method.
        method: &'static str,
        /// Bytes it expanded to (at most `want + 1`: decoding stops there).
        got: usize,
        /// Bytes the frame table records.
        want: usize,
    },
    /// A frame longer than [`FRAME_SIZE`]: no frame table holds one.
    #[error("a frame of {want} bytes, over the {FRAME_SIZE} a frame holds")]
    Oversized {
        /// Bytes asked for.
        want: usize,
    },
    /// The frame decodes to bytes that fail the CRC-32C of the frame table.
    #[error("checksum mismatch")]
    Checksum,
    /// The frame table has no such frame.
    #[error("no such frame in the table")]
    Missing,
}

/// Decompresses one frame that must expand to exactly `raw_len` bytes. A raw frame
/// given as an owned buffer is returned as it is, not copied: a random read of
/// incompressible data costs one read of its frame.
pub fn decompress_frame<'a>(
    method: Method,
    stored: impl Into<std::borrow::Cow<'a, [u8]>>,
    raw_len: usize,
) -> Result<Vec<u8>, FrameError> {
    let stored = stored.into();
    let stream = |source| FrameError::Stream {
        method: method.name(),
        source,
    };
    // The buffers below are sized by `raw_len` before anything is decoded.
    if raw_len > FRAME_SIZE {
        return Err(FrameError::Oversized { want: raw_len });
    }
    let out = match method {
        Method::Raw => stored.into_owned(),
        Method::Zstd => {
            // Into a buffer of exactly the frame's size, in one call: a stream that
            // would expand beyond it fails, one that expands to less fails below.
            let mut out = Vec::with_capacity(raw_len);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(&stored[..], &mut out))
                .map_err(stream)?;
            out
        }
        Method::Xz => {
            let mut out = Vec::with_capacity(raw_len + 1);
            xz2::read::XzDecoder::new(&stored[..])
                .take(raw_len as u64 + 1)
                .read_to_end(&mut out)
                .map_err(stream)?;
            out
        }
    };
    if out.len() != raw_len {
        return Err(FrameError::Length {
            method: method.name(),
            got: out.len(),
            want: raw_len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame of xorshift bytes from `seed`.
    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..FRAME_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_frames_are_stored_raw_at_once() {
        let raw = noise(0x9e37_79b9_7f4a_7c15);
        // (How much faster that is: docs/BENCHMARKS.md, not a timed test.)
        let (m, stored) = compress_frame(&raw);
        assert_eq!(m, Method::Raw);
        assert_eq!(stored, raw);
    }

    #[test]
    fn nearly_random_frames_keep_the_probes_output() {
        // Records of 256 bytes: a fixed 16-byte tag, then random bytes. About 5 % to
        // gain, all of which zstd -1 finds.
        let mut raw = noise(0x2545_f491_4f6c_dd1d);
        for (i, b) in raw.iter_mut().enumerate() {
            if i % 256 < 16 {
                *b = b"record-tag:0042|"[i % 256];
            }
        }
        let (m, stored) = compress_frame(&raw);
        assert_eq!(m, Method::Zstd);
        assert_eq!(stored, zstd::bulk::compress(&raw, 1).unwrap());
        assert_eq!(decompress_frame(m, &stored, raw.len()).unwrap(), raw);
    }

    #[test]
    fn frames_that_save_too_little_are_stored_raw() {
        // Bytes mod 232: 24 values twice as likely, 7.81 bits a byte, about 2.3 % to
        // gain, under the 3 % that pays for decoding the frame on every random read.
        let raw: Vec<u8> = noise(0x5851_f42d_4c95_7f2d)
            .into_iter()
            .map(|b| b % 232)
            .collect();
        assert!(zstd::bulk::compress(&raw, 1).unwrap().len() < raw.len());
        let (m, stored) = compress_frame(&raw);
        assert_eq!(m, Method::Raw);
        assert_eq!(stored, raw);
    }

    #[test]
    fn xz_with_a_frame_sized_dictionary_loses_nothing_to_9e() {
        // Noise, and repeats of it at all distances: what LZMA's matches are for.
        let noise = noise(0x1234_5678_9abc_def1);
        let raw: Vec<u8> = (0..FRAME_SIZE)
            .map(|i| noise[(i * 7919) % 65_536 + (i / 65_536) * 3])
            .collect();
        let small = xz_9e(&raw).unwrap();
        let mut full = Vec::new();
        xz2::read::XzEncoder::new(&raw[..], 9 | (1 << 31))
            .read_to_end(&mut full)
            .unwrap();
        assert!(
            small.len() <= full.len(),
            "{} > {}",
            small.len(),
            full.len()
        );
        assert_eq!(
            decompress_frame(Method::Xz, &small, raw.len()).unwrap(),
            raw
        );
    }

    #[test]
    fn picks_a_real_codec_for_redundant_data() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (m, stored) = compress_frame(&raw);
        assert_ne!(m, Method::Raw);
        assert_eq!(decompress_frame(m, &stored, raw.len()).unwrap(), raw);
    }

    proptest! {
        #[test]
        fn frames_roundtrip(raw in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let (m, stored) = compress_frame(&raw);
            prop_assert!(stored.len() <= raw.len());
            prop_assert_eq!(decompress_frame(m, &stored, raw.len()).unwrap(), raw);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), n in 0usize..1000) {
            for m in [Method::Raw, Method::Zstd, Method::Xz] {
                let _ = decompress_frame(m, &data, n);
                let _ = decompress_frame(m, &data, usize::MAX - n);
            }
        }
    }
}
