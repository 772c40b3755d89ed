//! Compressing a changed file again without coding what did not change. The text
//! chunks of the old blob that a change left alone are copied into the new blob as
//! they are (stream, token count and CRC: [`StreamEncoder::keep_chunk`]); only the new
//! bytes are segmented, coded and verified, a window at a time. A chunk is coded on
//! its own from BOS, so a copied stream decodes the same in any position of any blob
//! with the same model, build and predictor ([`Engine::can_reuse`]). Binary frames are
//! found by their bytes ([`BlobFrames`]): a new frame whose bytes an old one holds
//! takes the old one's stored bytes, whatever the model.
//!
//! [`StreamEncoder::keep_chunk`]: crate::StreamEncoder::keep_chunk

use super::pipeline::{CompressOptions, FrameSource};
use super::Engine;
use nc06::format::{decompress_frame, Blob, Header, Index, Method, Payload};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

impl Engine {
    /// Whether the chunks of a blob with header `base` can be copied into a blob this
    /// engine codes with `opts` ([`StreamEncoder::keep_chunk`](crate::StreamEncoder::keep_chunk)):
    /// the same model and build, predictors, window and coder precision.
    pub fn can_reuse(&self, base: &Header, opts: &CompressOptions) -> bool {
        base.fingerprint == self.model.fingerprint()
            && base.precision == self.precision()
            && base.flags == opts.flags
            && base.window == opts.window
            && base.temperature.to_bits() == opts.temperature.to_bits()
    }
}

/// The frames of a blob, found by the CRC-32C and length of their raw bytes; a
/// candidate is read from the blob's payload, decompressed (unless raw) and compared
/// byte for byte with the bytes it would stand for, so a CRC collision costs a
/// compression, never a wrong byte.
pub struct BlobFrames<'a> {
    blob: &'a Blob,
    index: &'a Index,
    payload: &'a dyn Payload,
    by_crc: HashMap<(u32, u32), Vec<usize>>,
    reused: AtomicU64,
}

impl<'a> BlobFrames<'a> {
    /// The frames of `blob`, its payload in `payload`.
    pub fn new(blob: &'a Blob, index: &'a Index, payload: &'a dyn Payload) -> Self {
        let mut by_crc: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
        for (f, e) in blob.frames.iter().enumerate() {
            by_crc.entry((e.crc, e.raw_len)).or_default().push(f);
        }
        BlobFrames {
            blob,
            index,
            payload,
            by_crc,
            reused: AtomicU64::new(0),
        }
    }

    /// Frames taken from this blob so far.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

impl FrameSource for BlobFrames<'_> {
    fn find(&self, raw: &[u8], crc: u32) -> Option<(Method, Vec<u8>)> {
        let len = u32::try_from(raw.len()).ok()?;
        for &f in self.by_crc.get(&(crc, len))? {
            let (Some(e), Some(&at)) = (self.blob.frames.get(f), self.index.frame_offsets.get(f))
            else {
                continue;
            };
            let Ok(stored) = self.payload.read(at, e.stored_len as usize) else {
                continue;
            };
            let same = match e.method {
                Method::Raw => stored[..] == raw[..],
                m => decompress_frame(m, &stored[..], raw.len()).is_ok_and(|b| b[..] == raw[..]),
            };
            if same {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Some((e.method, stored.into_owned()));
            }
        }
        None
    }
}
