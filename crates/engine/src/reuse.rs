//! Compressing a changed file again without coding what did not change. The text
//! chunks of the old blob that a change left alone are copied into the new blob as
//! they are (stream, token count and CRC); only the new bytes are segmented, coded
//! and verified. A chunk is coded on its own from BOS, so a copied stream decodes
//! the same in any position of any blob with the same model, build and predictor.
//! Binary frames are found by their bytes ([`BlobFrames`]): a new frame whose bytes
//! an old one holds takes the old one's stored bytes, whatever the model.

use super::pipeline::{
    finish, frames_of, CompressOptions, Compressed, FrameSource, Prepared, Stats,
};
use super::{Engine, Progress, TokenStream};
use crate::{Error, Result};
use nc06::format::{
    decompress_frame, Blob, ChunkEntry, Extent, ExtentKind, Header, Index, Method, Payload,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// One stretch of the new file, in order: the parts tile it.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    /// Text chunk `k` of the old blob, unchanged.
    Kept(usize),
    /// New bytes, segmented and coded as a file of their own would be.
    New(&'a [u8]),
}

impl Engine {
    /// Whether the chunks of a blob with header `base` can be copied into a blob this
    /// engine codes with `opts`: the same model and build, predictors, window and
    /// coder precision.
    pub fn can_reuse(&self, base: &Header, opts: &CompressOptions) -> bool {
        base.fingerprint == self.model.fingerprint()
            && base.precision == self.precision()
            && base.flags == opts.flags
            && base.window == opts.window
            && base.temperature.to_bits() == opts.temperature.to_bits()
    }

    /// The blob of a file made of `parts`: chunks of `base` (whose payload is
    /// `payload`) copied, new bytes coded. The caller checks [`Engine::can_reuse`].
    /// With `opts.verify` every new chunk and frame is decoded back first; copied
    /// chunks were verified when they were made, and their CRCs still check every
    /// read. The never-worse fallback of [`Engine::compress`] is not applied.
    pub fn recompress(
        &self,
        base: &Blob,
        index: &Index,
        payload: &dyn Payload,
        parts: &[Part<'_>],
        opts: &CompressOptions,
        progress: Option<Progress<'_>>,
    ) -> Result<Compressed> {
        if !self.can_reuse(&base.header, opts) {
            return Err(Error::Internal("recompress over an incompatible blob"));
        }
        let mut prepared: Vec<Prepared> = parts
            .iter()
            .filter_map(|p| match p {
                Part::New(d) => Some(self.prepare(d, opts)),
                Part::Kept(_) => None,
            })
            .collect();
        let mut tokens: Vec<TokenStream> = Vec::new();
        for p in &mut prepared {
            tokens.append(&mut p.tokens);
        }
        if let Some(p) = progress {
            let coded: u64 = tokens.iter().map(|t| t.0.len() as u64).sum();
            p.total(if opts.verify { 2 * coded } else { coded });
        }
        let binary: Vec<u8> = prepared
            .iter()
            .flat_map(|p| p.binary.iter().copied())
            .collect();
        let old_frames = BlobFrames::new(base, index, payload);
        let (frames, coded) = std::thread::scope(|scope| {
            let frames = scope.spawn(|| frames_of(&binary, false, opts.verify, Some(&old_frames)));
            let coded = self.encode(&tokens, opts.window, self.predictor(opts), progress);
            (frames.join(), coded)
        });
        let frames = frames.map_err(|_| Error::Panicked("binary frame compressor"))??;
        let (coded, _) = coded?;
        if opts.verify {
            let back = self.decode_back(&coded, opts, progress)?;
            if let Some(chunk) = (0..tokens.len()).find(|&i| back[i] != tokens[i]) {
                return Err(Error::VerifyFailed { chunk });
            }
        }

        // The text extents of the old blob, by chunk: their lengths.
        let mut chunk_len = vec![0u64; base.chunks.len()];
        for e in index.extents.iter().filter(|e| e.kind == ExtentKind::Text) {
            if let Some(l) = chunk_len.get_mut(e.chunk) {
                *l = e.len;
            }
        }
        let mut extents = Vec::new();
        let mut chunks = Vec::new();
        let mut payload_out = Vec::new();
        let mut crc = 0u32;
        let mut len = 0u64;
        let mut stats = Stats::default();
        let mut new = prepared.iter();
        let mut coded_iter = coded.iter();
        for part in parts {
            match *part {
                Part::Kept(k) => {
                    let entry = *base
                        .chunks
                        .get(k)
                        .ok_or(Error::Internal("kept chunk out of range"))?;
                    let l = chunk_len[k];
                    let stream = payload
                        .read(index.chunk_offsets[k], entry.stream_len as usize)
                        .map_err(Error::Payload)?;
                    payload_out.extend_from_slice(&stream);
                    extents.push(Extent {
                        kind: ExtentKind::Text,
                        len: l,
                    });
                    chunks.push(entry);
                    crc = crc32c::crc32c_combine(crc, entry.crc, l as usize);
                    len += l;
                    stats.text_bytes += l;
                    stats.stream_bytes += entry.stream_len as u64;
                    stats.tokens += entry.tokens as u64;
                }
                Part::New(d) => {
                    let p = new
                        .next()
                        .ok_or(Error::Internal("parts and preparations"))?;
                    for piece in &p.pieces {
                        extents.push(Extent {
                            kind: piece.kind,
                            len: piece.range.len() as u64,
                        });
                        if piece.kind == ExtentKind::Text {
                            let c = coded_iter
                                .next()
                                .ok_or(Error::Internal("chunks and coded streams"))?;
                            chunks.push(ChunkEntry {
                                tokens: c.tokens,
                                stream_len: c.bytes.len() as u32,
                                crc: crc32c::crc32c(&d[piece.range.clone()]),
                            });
                            payload_out.extend_from_slice(&c.bytes);
                            stats.text_bytes += piece.range.len() as u64;
                            stats.stream_bytes += c.bytes.len() as u64;
                            stats.tokens += c.tokens as u64;
                            stats.ideal_bits += c.ideal_bits;
                        }
                    }
                    crc = crc32c::crc32c_append(crc, d);
                    len += d.len() as u64;
                }
            }
        }
        stats.original = len;
        stats.binary_bytes = binary.len() as u64;
        stats.chunks = chunks.len();
        stats.frames = frames.len();
        let mut entries = Vec::with_capacity(frames.len());
        for (entry, stored) in frames {
            payload_out.extend_from_slice(&stored);
            entries.push(entry);
        }
        let blob = Blob {
            header: self.header(opts, len, crc),
            extents,
            chunks,
            frames: entries,
            payload: payload_out,
        };
        finish(blob, stats)
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
