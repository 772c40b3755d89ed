//! Whole files: segmentation, tokenizer round-trip checks, binary frames beside the
//! model streams, verification by decoding, and the NC06 container around it all.

use super::jobs::{DecodeJob, EncodeJob, Work};
use super::{CodedStream, Engine, Priority, Progress, TokenStream};
use crate::{Error, Result};
use nc06::codec::Precision;
use nc06::format::{
    compress_frame, decompress_frame, segment, zero_runs, Blob, ChunkEntry, Extent, ExtentKind,
    Flags, FrameEntry, FrameError, Header, Index, Payload, SegmentOptions, FRAME_SIZE,
    MIN_ZERO_RUN,
};
use nc06::predict::PredictorConfig;
use nc06::Window;
use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

/// Choices that shape the blob (and are recorded in it where the decoder needs them).
#[derive(Clone, Debug)]
pub struct CompressOptions {
    /// Target size of a text chunk, in bytes.
    pub chunk_size: usize,
    /// The context window of every chunk's stream.
    pub window: Window,
    /// Softmax temperature (1.0: the model's own distribution).
    pub temperature: f32,
    /// Which predictors run (see [`Flags`]).
    pub flags: Flags,
    /// Decode every chunk back and compare before returning the blob.
    pub verify: bool,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            chunk_size: nc06::format::DEFAULT_CHUNK_SIZE,
            window: Window::default(),
            temperature: 1.0,
            flags: Flags(Flags::DEFAULT),
            verify: true,
        }
    }
}

/// What compressing one file did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Bytes in.
    pub original: u64,
    /// Blob bytes out.
    pub compressed: u64,
    /// Bytes coded by the model.
    pub text_bytes: u64,
    /// Bytes in binary frames.
    pub binary_bytes: u64,
    /// Tokens coded.
    pub tokens: u64,
    /// Text chunks.
    pub chunks: usize,
    /// Binary frames.
    pub frames: usize,
    /// Ideal code length of the tokens under the quantised CDFs, in bits.
    pub ideal_bits: f64,
    /// Bytes of all chunk streams.
    pub stream_bytes: u64,
    /// Seconds coding (model and frames, in parallel).
    pub encode_secs: f64,
    /// Seconds decoding the streams back to verify them.
    pub verify_secs: f64,
    /// Tokens coded without asking the model (confidence skip).
    pub skipped: u64,
    /// Seconds inside llama.cpp decode calls while encoding.
    pub model_secs: f64,
    /// Text chunks copied from an old blob as they were, not coded (counted in
    /// `chunks`, `tokens` and `stream_bytes` too).
    pub kept_chunks: usize,
}

/// A compressed file.
pub struct Compressed {
    /// The serialised NC06 blob.
    pub blob: Vec<u8>,
    /// What it took.
    pub stats: Stats,
}

/// An extent being built: its kind and its byte range in the input.
pub(crate) struct Piece {
    pub kind: ExtentKind,
    pub range: Range<usize>,
}

/// Whether a run of `kind` joins the run of `last` before it into `joined` bytes:
/// binary to binary and zeros to zeros (text chunks stay apart: each is one stream),
/// up to the longest extent a writer makes.
pub(crate) fn joins(last: ExtentKind, kind: ExtentKind, joined: u64) -> bool {
    kind != ExtentKind::Text && last == kind && joined < nc06::format::MAX_ZERO_EXTENT
}

/// Appends `range` to `pieces` as a piece of `kind`, merged into the last piece when
/// they [`joins`].
pub(crate) fn push_piece(pieces: &mut Vec<Piece>, kind: ExtentKind, range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    match pieces.last_mut() {
        Some(last)
            if last.range.end == range.start
                && joins(last.kind, kind, (range.end - last.range.start) as u64) =>
        {
            last.range.end = range.end
        }
        _ => pieces.push(Piece { kind, range }),
    }
}

/// For each text piece of `pieces` (over `data`), whether zstd -19 or xz -9e stores
/// it in fewer bytes than its model stream in `coded`: the never-worse rule.
pub(crate) fn worse_than_classical(
    data: &[u8],
    pieces: &[Piece],
    coded: &[CodedStream],
) -> Vec<bool> {
    pieces
        .iter()
        .filter(|x| x.kind == ExtentKind::Text)
        .zip(coded)
        .map(|(x, c)| compress_frame(&data[x.range.clone()]).1.len() < c.bytes.len())
        .collect()
}

/// `pieces` with the text chunks marked in `demote` (one flag per text piece) made
/// binary, merged with their binary neighbours.
pub(crate) fn demote_pieces(pieces: &[Piece], demote: &[bool]) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
    let mut flags = demote.iter();
    for x in pieces {
        let mut kind = x.kind;
        if kind == ExtentKind::Text && flags.next() == Some(&true) {
            kind = ExtentKind::Binary;
        }
        push_piece(&mut out, kind, x.range.clone());
    }
    out
}

/// A file segmented and tokenized, waiting for the model.
pub(crate) struct Prepared<'a> {
    pub data: &'a [u8],
    pub pieces: Vec<Piece>,
    /// Token streams of the text pieces, in order (moved into the batch's run).
    pub tokens: Vec<TokenStream>,
    /// The binary pieces concatenated (borrowed when the file is one binary piece).
    pub binary: std::borrow::Cow<'a, [u8]>,
}

/// Above this many binary bytes, a file with less text than binary keeps its text
/// chunks as coded: recoding its frames would cost more than the chunks could save.
const FALLBACK_BINARY_MAX: usize = 32 << 20;

/// A file's binary frames: table entry and stored bytes.
pub(crate) type Frames = Vec<(FrameEntry, Vec<u8>)>;

impl Engine {
    /// Compresses `data` into an NC06 blob. With `opts.verify` the blob is returned only
    /// after every chunk decoded back to its exact input.
    pub fn compress(
        &self,
        data: &[u8],
        opts: &CompressOptions,
        progress: Option<Progress<'_>>,
    ) -> Result<Compressed> {
        let mut out = self.compress_batch(&[data], opts, progress)?;
        out.pop()
            .unwrap_or(Err(Error::Internal("compress_batch returned no result")))
    }

    /// Compresses several files in one model run: the text chunks of all of them share
    /// the lockstep streams, so many small files keep the batch as full as one large
    /// file would. Each blob is byte-identical to compressing its file alone (a
    /// sequence's logits do not depend on the others in the call). A failure of the run
    /// itself fails the whole batch (`Err`); a file whose chunk does not verify gets its
    /// own `Err` in the returned list. Timings in each file's [`Stats`] are its share,
    /// by tokens, of the batch's.
    pub fn compress_batch(
        &self,
        files: &[&[u8]],
        opts: &CompressOptions,
        progress: Option<Progress<'_>>,
    ) -> Result<Vec<Result<Compressed>>> {
        let mut prepared: Vec<Prepared> = files.iter().map(|d| self.prepare(d, opts)).collect();
        // All token streams in file order; file i owns streams[spans[i]].
        let mut tokens: Vec<TokenStream> = Vec::new();
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(files.len());
        for p in &mut prepared {
            let start = tokens.len();
            tokens.append(&mut p.tokens);
            spans.push(start..tokens.len());
        }

        if let Some(p) = progress {
            let coded: u64 = tokens.iter().map(|t| t.0.len() as u64).sum();
            p.total(if opts.verify { 2 * coded } else { coded });
        }
        let t0 = Instant::now();
        // Frames on every core when the model has nothing to do; beside the model on one
        // thread otherwise (its threads use the other cores, and spin when crowded).
        let parallel = tokens.iter().all(|t| t.0.is_empty()) && self.model_idle();
        let (frames, coded) = std::thread::scope(|scope| {
            let frames = scope.spawn(|| {
                prepared
                    .iter()
                    .map(|p| frames_of(&p.binary, parallel, opts.verify, None))
                    .collect::<Result<Vec<Frames>>>()
            });
            let coded = self.encode(&tokens, opts.window, self.predictor(opts), progress);
            (frames.join(), coded)
        });
        let frames = frames.map_err(|_| Error::Panicked("binary frame compressor"))??;
        let (coded, run) = coded?;
        let encode_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        // Per file: the first chunk that did not decode back, if any.
        let mut failed: Vec<Option<usize>> = vec![None; files.len()];
        if opts.verify {
            let back = self.decode_back(&coded, opts, progress)?;
            for (f, span) in spans.iter().enumerate() {
                failed[f] = span
                    .clone()
                    .find(|&i| back[i] != tokens[i])
                    .map(|i| i - span.start);
            }
        }
        let verify_secs = t1.elapsed().as_secs_f64();

        let total_tokens: u64 = tokens.iter().map(|t| t.0.len() as u64).sum();
        let mut out = Vec::with_capacity(files.len());
        for (f, (p, frames)) in prepared.iter().zip(frames).enumerate() {
            if let Some(chunk) = failed[f] {
                out.push(Err(Error::VerifyFailed { chunk }));
                continue;
            }
            let span = spans[f].clone();
            let file_tokens: u64 = tokens[span.clone()].iter().map(|t| t.0.len() as u64).sum();
            let share = if files.len() == 1 {
                1.0
            } else if total_tokens > 0 {
                file_tokens as f64 / total_tokens as f64
            } else {
                0.0
            };
            let mut c = self.assemble(p, &coded[span.clone()], frames, opts)?;
            if let Some(smaller) = self.fallback(p, &coded[span], c.blob.len(), opts)? {
                c = smaller;
            }
            let s = &mut c.stats;
            s.tokens = file_tokens;
            s.encode_secs = encode_secs * share;
            s.verify_secs = verify_secs * share;
            s.model_secs = run.model_secs * share;
            s.skipped = (run.skipped as f64 * share).round() as u64;
            out.push(Ok(c));
        }
        Ok(out)
    }

    /// The token streams of `data`'s text chunks, as compression would code them, and
    /// how many bytes of text they hold (for measurements: `nacrithfs bench-ensemble`).
    pub fn token_streams(&self, data: &[u8], opts: &CompressOptions) -> (Vec<TokenStream>, u64) {
        let p = self.prepare(data, opts);
        let text = p
            .pieces
            .iter()
            .filter(|x| x.kind == ExtentKind::Text)
            .map(|x| x.range.len() as u64)
            .sum();
        (p.tokens, text)
    }

    /// Segments a file and tokenizes its text, checking each chunk's round trip.
    pub(crate) fn prepare<'a>(&self, data: &'a [u8], opts: &CompressOptions) -> Prepared<'a> {
        let seg_opts = SegmentOptions {
            chunk_size: opts.chunk_size,
            ..Default::default()
        };
        let mut pieces: Vec<Piece> = Vec::new();
        let mut tokens: Vec<TokenStream> = Vec::new();
        for s in segment(data, &seg_opts) {
            let toks = match s.kind {
                ExtentKind::Text => self.model.tokenize_exact(&data[s.range.clone()]),
                ExtentKind::Binary | ExtentKind::Zero => None,
            };
            let kind = if toks.is_some() {
                ExtentKind::Text
            } else {
                ExtentKind::Binary
            };
            if kind == ExtentKind::Text {
                tokens.push(TokenStream(toks.unwrap_or_default()));
            } else if s.kind == ExtentKind::Text {
                log::debug!(
                    "text at {:?} does not survive the tokenizer round trip; storing it as binary",
                    s.range
                );
            }
            if kind == ExtentKind::Binary {
                // Long runs of zeros (holes) become zero extents: nothing is stored.
                let mut at = s.range.start;
                for z in zero_runs(&data[s.range.clone()], MIN_ZERO_RUN) {
                    let z = s.range.start + z.start..s.range.start + z.end;
                    push_piece(&mut pieces, ExtentKind::Binary, at..z.start);
                    push_piece(&mut pieces, ExtentKind::Zero, z.clone());
                    at = z.end;
                }
                push_piece(&mut pieces, ExtentKind::Binary, at..s.range.end);
            } else {
                push_piece(&mut pieces, kind, s.range);
            }
        }
        let binary_len = pieces
            .iter()
            .filter(|p| p.kind == ExtentKind::Binary)
            .map(|p| p.range.len())
            .sum();
        let binary = match &pieces[..] {
            [only] if only.kind == ExtentKind::Binary => std::borrow::Cow::Borrowed(data),
            _ => {
                let mut binary = Vec::with_capacity(binary_len);
                for p in pieces.iter().filter(|p| p.kind == ExtentKind::Binary) {
                    binary.extend_from_slice(&data[p.range.clone()]);
                }
                std::borrow::Cow::Owned(binary)
            }
        };
        Prepared {
            data,
            pieces,
            tokens,
            binary,
        }
    }

    /// The model never costs more than the classical codecs: a text chunk that zstd -19
    /// or xz -9e stores in fewer bytes than its model stream becomes binary, and a file
    /// that is mostly text is also tried as binary frames alone. Returns the smallest
    /// of those blobs when it is smaller than `coded_len`, the blob as coded. The
    /// decoder needs nothing new: which bytes are text is the extent table's to say.
    /// Skipped for files that are mostly binary and large, where recoding their frames
    /// would cost more than the few text chunks could save.
    fn fallback(
        &self,
        p: &Prepared<'_>,
        coded: &[CodedStream],
        coded_len: usize,
        opts: &CompressOptions,
    ) -> Result<Option<Compressed>> {
        let texts: Vec<&Piece> = p
            .pieces
            .iter()
            .filter(|x| x.kind == ExtentKind::Text)
            .collect();
        let text_bytes: usize = texts.iter().map(|x| x.range.len()).sum();
        if texts.is_empty() || (p.binary.len() > FALLBACK_BINARY_MAX && text_bytes < p.binary.len())
        {
            return Ok(None);
        }
        let demote = worse_than_classical(p.data, &p.pieces, coded);
        let mut best: Option<Compressed> = None;
        let mut candidates = Vec::new();
        // Every chunk as binary is a candidate of its own only where the per-chunk
        // choice kept some text (otherwise the two are the same).
        if text_bytes >= p.binary.len() && demote.contains(&false) {
            candidates.push(vec![true; texts.len()]);
        }
        if demote.contains(&true) {
            candidates.push(demote);
        }
        for demote in candidates {
            let c = self.demoted(p, coded, &demote, opts)?;
            if c.blob.len() < best.as_ref().map_or(coded_len, |b| b.blob.len()) {
                best = Some(c);
            }
        }
        Ok(best)
    }

    /// `p`'s blob with the text chunks marked in `demote` stored as binary frames.
    fn demoted(
        &self,
        p: &Prepared<'_>,
        coded: &[CodedStream],
        demote: &[bool],
        opts: &CompressOptions,
    ) -> Result<Compressed> {
        let pieces = demote_pieces(&p.pieces, demote);
        let kept: Vec<CodedStream> = coded
            .iter()
            .zip(demote)
            .filter(|(_, &d)| !d)
            .map(|(c, _)| c.clone())
            .collect();
        let mut binary = Vec::new();
        for x in pieces.iter().filter(|x| x.kind == ExtentKind::Binary) {
            binary.extend_from_slice(&p.data[x.range.clone()]);
        }
        let frames = frames_of(&binary, false, opts.verify, None)?;
        let q = Prepared {
            data: p.data,
            pieces,
            tokens: Vec::new(),
            binary: std::borrow::Cow::Owned(binary),
        };
        self.assemble(&q, &kept, frames, opts)
    }

    /// Builds, serialises and re-parses one file's blob from its coded streams and frames.
    fn assemble(
        &self,
        p: &Prepared<'_>,
        coded: &[CodedStream],
        frames: Frames,
        opts: &CompressOptions,
    ) -> Result<Compressed> {
        let data = p.data;
        let mut text_chunks = p.pieces.iter().filter(|p| p.kind == ExtentKind::Text);
        let chunks: Vec<ChunkEntry> = coded
            .iter()
            .map(|c| {
                let range = text_chunks
                    .next()
                    .map(|p| p.range.clone())
                    .unwrap_or_default();
                ChunkEntry {
                    tokens: c.tokens,
                    stream_len: c.bytes.len() as u32,
                    crc: crc32c::crc32c(&data[range]),
                }
            })
            .collect();
        let payload_len = coded.iter().map(|c| c.bytes.len()).sum::<usize>()
            + frames.iter().map(|(_, s)| s.len()).sum::<usize>();
        let mut payload: Vec<u8> = Vec::with_capacity(payload_len);
        for c in coded {
            payload.extend_from_slice(&c.bytes);
        }
        let n_frames = frames.len();
        let mut entries = Vec::with_capacity(n_frames);
        // Each frame's bytes are let go as soon as they are in the payload.
        for (entry, stored) in frames {
            payload.extend_from_slice(&stored);
            entries.push(entry);
        }
        let blob = Blob {
            header: self.header(opts, data.len() as u64, crc32c::crc32c(data)),
            extents: p
                .pieces
                .iter()
                .map(|p| Extent {
                    kind: p.kind,
                    len: p.range.len() as u64,
                })
                .collect(),
            chunks,
            frames: entries,
            payload,
        };
        let stats = Stats {
            original: data.len() as u64,
            text_bytes: p
                .pieces
                .iter()
                .filter(|p| p.kind == ExtentKind::Text)
                .map(|p| p.range.len() as u64)
                .sum(),
            binary_bytes: p.binary.len() as u64,
            chunks: coded.len(),
            frames: n_frames,
            ideal_bits: coded.iter().map(|c| c.ideal_bits).sum(),
            stream_bytes: coded.iter().map(|c| c.bytes.len() as u64).sum(),
            ..Default::default()
        };
        finish(blob, stats)
    }

    /// The header of a blob this engine codes with `opts`.
    pub(crate) fn header(&self, opts: &CompressOptions, original_len: u64, crc: u32) -> Header {
        Header {
            flags: opts.flags,
            original_len,
            original_crc: crc,
            fingerprint: self.model.fingerprint(),
            window: opts.window,
            temperature: opts.temperature,
            chunk_size: opts.chunk_size as u32,
            precision: self.precision(),
        }
    }

    /// The coder precision of this engine's blobs, from its model's vocabulary.
    pub fn precision(&self) -> Precision {
        Precision::for_vocab(self.model.n_vocab())
    }

    /// How this engine's predictors run for a blob coded with `opts`.
    pub(crate) fn predictor(&self, opts: &CompressOptions) -> PredictorConfig {
        PredictorConfig {
            flags: opts.flags,
            temperature: opts.temperature,
            precision: self.precision(),
        }
    }

    /// Arithmetic-codes token streams, all in lockstep.
    pub fn encode(
        &self,
        streams: &[TokenStream],
        window: Window,
        predictor: PredictorConfig,
        progress: Option<Progress<'_>>,
    ) -> Result<(Vec<CodedStream>, super::RunStats)> {
        let works = streams
            .iter()
            .map(|t| Work::Encode(EncodeJob::new(t.0.clone())))
            .collect();
        let (done, stats) = self.run(works, window, predictor, progress, Priority::Foreground)?;
        let coded = done
            .into_iter()
            .map(|w| match w {
                Work::Encode(j) => Ok(j.into_stream()),
                Work::Decode(_) => Err(Error::Internal("encode returned a decode job")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((coded, stats))
    }

    /// The verifying pass: decodes freshly coded streams back, in lockstep.
    pub(crate) fn decode_back(
        &self,
        coded: &[CodedStream],
        opts: &CompressOptions,
        progress: Option<Progress<'_>>,
    ) -> Result<Vec<TokenStream>> {
        let streams: Vec<(&[u8], u32)> = coded.iter().map(|c| (&c.bytes[..], c.tokens)).collect();
        self.decode_streams(
            &streams,
            opts.window,
            self.predictor(opts),
            progress,
            Priority::Foreground,
        )
    }

    /// Decodes `(stream, token count)` pairs, all in lockstep.
    pub fn decode_streams(
        &self,
        streams: &[(&[u8], u32)],
        window: Window,
        predictor: PredictorConfig,
        progress: Option<Progress<'_>>,
        priority: Priority,
    ) -> Result<Vec<TokenStream>> {
        let works = streams
            .iter()
            .map(|(b, n)| Work::Decode(DecodeJob::new(b.to_vec(), *n)))
            .collect();
        let (done, _) = self.run(works, window, predictor, progress, priority)?;
        done.into_iter()
            .map(|w| match w {
                Work::Decode(j) => Ok(j.into_tokens()),
                Work::Encode(_) => Err(Error::Internal("decode returned an encode job")),
            })
            .collect()
    }

    /// Refuses blobs whose text was coded by another model or build.
    pub fn check_fingerprint(&self, blob: &Blob) -> Result<()> {
        let ours = self.model.fingerprint();
        if !blob.chunks.is_empty() && blob.header.fingerprint != ours {
            return Err(Error::FingerprintMismatch {
                blob: blob.header.fingerprint,
                ours,
            });
        }
        Ok(())
    }

    /// Decompresses a whole blob, checking every checksum.
    pub fn decompress(&self, bytes: &[u8], progress: Option<Progress<'_>>) -> Result<Vec<u8>> {
        let blob = Blob::parse(bytes)?;
        let index = blob.index();
        let (_, out) =
            self.decompress_range(&blob, &index, 0, blob.header.original_len, progress)?;
        if crc32c::crc32c(&out) != blob.header.original_crc {
            return Err(Error::FileChecksum);
        }
        Ok(out)
    }

    /// Decodes `[start, end)` of the original file of an in-memory blob; see
    /// [`Engine::decode_range`].
    pub fn decompress_range(
        &self,
        blob: &Blob,
        index: &Index,
        start: u64,
        end: u64,
        progress: Option<Progress<'_>>,
    ) -> Result<(u64, Vec<u8>)> {
        self.decode_range(blob, index, &blob.payload, start, end, progress)
    }

    /// Decodes `[start, end)` of the original file from `blob`'s tables and the
    /// payload in `payload`: the text chunks it overlaps whole (each is one coded
    /// stream), binary bytes exactly (decompressing only the frames they lie in).
    /// Returns the offset of the first byte returned and the bytes.
    pub fn decode_range(
        &self,
        blob: &Blob,
        index: &Index,
        payload: &dyn Payload,
        start: u64,
        end: u64,
        progress: Option<Progress<'_>>,
    ) -> Result<(u64, Vec<u8>)> {
        self.decode_range_at(
            blob,
            index,
            payload,
            start..end,
            progress,
            Priority::Foreground,
        )
    }

    /// [`Engine::decode_range`] at `priority`: a reader's decode ahead of its reads
    /// runs at [`Priority::Background`].
    pub fn decode_range_at(
        &self,
        blob: &Blob,
        index: &Index,
        payload: &dyn Payload,
        range: Range<u64>,
        progress: Option<Progress<'_>>,
        priority: Priority,
    ) -> Result<(u64, Vec<u8>)> {
        let (start, end) = (range.start, range.end);
        let ext = index.overlapping(start, end);
        let (Some(first), Some(last)) = (
            index.extents.get(ext.start),
            ext.end.checked_sub(1).and_then(|l| index.extents.get(l)),
        ) else {
            return Ok((start.min(blob.header.original_len), Vec::new()));
        };
        let lo = match first.kind {
            ExtentKind::Text => first.orig_offset,
            ExtentKind::Binary | ExtentKind::Zero => start.max(first.orig_offset),
        };
        let hi = match last.kind {
            ExtentKind::Text => last.orig_offset + last.len,
            ExtentKind::Binary | ExtentKind::Zero => end.min(last.orig_offset + last.len),
        };
        let texts: Vec<usize> = index.extents[ext.clone()]
            .iter()
            .filter(|e| e.kind == ExtentKind::Text)
            .map(|e| e.chunk)
            .collect();
        if !texts.is_empty() {
            self.check_fingerprint(blob)?;
        }
        let stored = texts
            .iter()
            .map(|&c| {
                payload
                    .read(index.chunk_offsets[c], blob.chunks[c].stream_len as usize)
                    .map_err(Error::Payload)
            })
            .collect::<Result<Vec<_>>>()?;
        let streams: Vec<(&[u8], u32)> = texts
            .iter()
            .zip(&stored)
            .map(|(&c, s)| (&s[..], blob.chunks[c].tokens))
            .collect();
        let predictor = PredictorConfig::of(&blob.header);
        let decoded =
            self.decode_streams(&streams, blob.header.window, predictor, progress, priority)?;
        let mut text_bytes: HashMap<usize, Vec<u8>> = HashMap::new();
        for (&c, toks) in texts.iter().zip(decoded) {
            let mut bytes = Vec::new();
            self.model.detokenize_into(&toks.0, &mut bytes);
            if crc32c::crc32c(&bytes) != blob.chunks[c].crc {
                return Err(Error::ChunkChecksum { chunk: c });
            }
            text_bytes.insert(c, bytes);
        }
        let mut frames: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut out = Vec::with_capacity(hi.saturating_sub(lo).min(1 << 24) as usize);
        let last_extent = ext.end - 1;
        for (i, e) in index.extents[ext.clone()].iter().enumerate() {
            let last = ext.start + i == last_extent;
            match e.kind {
                ExtentKind::Text => {
                    let bytes = text_bytes.remove(&e.chunk).unwrap_or_default();
                    if bytes.len() as u64 != e.len {
                        return Err(Error::ChunkChecksum { chunk: e.chunk });
                    }
                    out.extend_from_slice(&bytes);
                }
                ExtentKind::Zero => {
                    let from = lo.max(e.orig_offset);
                    let to = hi.min(e.orig_offset + e.len);
                    out.resize(out.len() + (to - from) as usize, 0);
                }
                ExtentKind::Binary => {
                    // Only the part of the extent inside [lo, hi).
                    let from = lo.max(e.orig_offset) - e.orig_offset;
                    let to = hi.min(e.orig_offset + e.len) - e.orig_offset;
                    let (mut off, end) = (e.binary_offset + from, e.binary_offset + to);
                    while off < end {
                        let f = (off / FRAME_SIZE as u64) as usize;
                        let raw = match frames.entry(f) {
                            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(self.frame(blob, index, payload, f)?)
                            }
                        };
                        let in_frame = (off - f as u64 * FRAME_SIZE as u64) as usize;
                        let take = ((end - off) as usize).min(raw.len() - in_frame);
                        if out.is_empty() && take == raw.len() && last && off + take as u64 == end {
                            // The range is exactly this frame: hand it over, uncopied.
                            out = std::mem::take(raw);
                        } else {
                            out.extend_from_slice(&raw[in_frame..in_frame + take]);
                        }
                        off += take as u64;
                    }
                }
            }
        }
        Ok((lo, out))
    }

    fn frame(
        &self,
        blob: &Blob,
        index: &Index,
        payload: &dyn Payload,
        f: usize,
    ) -> Result<Vec<u8>> {
        let entry = blob.frames.get(f).ok_or(Error::Frame {
            frame: f,
            source: FrameError::Missing,
        })?;
        let stored = payload
            .read(index.frame_offsets[f], entry.stored_len as usize)
            .map_err(Error::Payload)?;
        let raw = decompress_frame(entry.method, stored, entry.raw_len as usize)
            .map_err(|source| Error::Frame { frame: f, source })?;
        if crc32c::crc32c(&raw) != entry.crc {
            return Err(Error::Frame {
                frame: f,
                source: FrameError::Checksum,
            });
        }
        Ok(raw)
    }
}

/// Cuts binary bytes into frames, each stored with the better classical codec, on all
/// cores with `parallel` (the result does not depend on it). With `verify`, every
/// stored frame is decompressed and compared before it is accepted.
/// Serialises `blob` and parses it back: the container must read back as written
/// before anyone trusts it (its tables parsed back, its payload compared in place
/// rather than copied).
pub(crate) fn finish(mut blob: Blob, mut stats: Stats) -> Result<Compressed> {
    let bytes = blob.to_bytes();
    let (back, header_len) = Blob::parse_header(&bytes)?;
    let payload = std::mem::take(&mut blob.payload);
    if back != blob
        || bytes.len() - header_len != payload.len()
        || bytes[header_len..] != payload[..]
    {
        return Err(Error::ContainerRoundTrip);
    }
    stats.compressed = bytes.len() as u64;
    Ok(Compressed { blob: bytes, stats })
}

/// Frames stored before that a compression may take as they are instead of
/// compressing their bytes again: those of the blob a changed file had. Frames do
/// not depend on the model, so any blob's frames will do.
pub trait FrameSource: Sync {
    /// A stored frame whose raw bytes are exactly `raw` (CRC-32C `crc`), checked
    /// byte for byte against `raw` before it is returned: its method and stored bytes.
    fn find(&self, raw: &[u8], crc: u32) -> Option<(nc06::format::Method, Vec<u8>)>;
}

/// Compresses binary bytes into frames (each checked to decompress back with
/// `verify`), on every core with `parallel`. A frame `reuse` already holds is taken
/// from it, not compressed again.
pub(crate) fn frames_of(
    binary: &[u8],
    parallel: bool,
    verify: bool,
    reuse: Option<&dyn FrameSource>,
) -> Result<Frames> {
    use rayon::prelude::*;
    let one = |(i, raw): (usize, &[u8])| -> Result<(FrameEntry, Vec<u8>)> {
        let crc = crc32c::crc32c(raw);
        if let Some((method, stored)) = reuse.and_then(|r| r.find(raw, crc)) {
            let entry = FrameEntry {
                method,
                raw_len: raw.len() as u32,
                stored_len: stored.len() as u32,
                crc,
            };
            return Ok((entry, stored));
        }
        let (method, stored) = compress_frame(raw);
        if verify && method != nc06::format::Method::Raw {
            let back = decompress_frame(method, &stored, raw.len())
                .map_err(|source| Error::Frame { frame: i, source })?;
            if back != raw {
                return Err(Error::VerifyFailedFrame { frame: i });
            }
        }
        Ok((
            FrameEntry {
                method,
                raw_len: raw.len() as u32,
                stored_len: stored.len() as u32,
                crc,
            },
            stored,
        ))
    };
    if parallel {
        binary.par_chunks(FRAME_SIZE).enumerate().map(one).collect()
    } else {
        binary.chunks(FRAME_SIZE).enumerate().map(one).collect()
    }
}
