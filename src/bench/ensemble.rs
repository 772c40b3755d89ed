//! `nacrithfs bench-ensemble`: the ablation of the ensemble. The model's logits for
//! every token of the files' text chunks are computed once (cached on disk, they are
//! most of the cost) and then replayed through the real [`Predictor`] under each
//! configuration, so a table of many configurations costs one model run. The bits are
//! the ideal code length under the quantised CDFs, which the arithmetic coder meets
//! within 0.1 % (tests/codec.rs); the replay gives exactly the CDFs compression would.
//!
//! Time per token: the model's decode time per token is measured with and without the
//! output layer (a skipped token still enters the model's context, but its logits are
//! not computed), and the predictor's own time is measured in the replay.

use super::BenchError;
use crate::args::ModelArgs;
use nacrithfs_engine::model::{Feed, Model, Session};
use nacrithfs_engine::{CompressOptions, TokenStream};
use nacrithfs_fs::store::AtomicFile;
use nc06::codec::Precision;
use nc06::format::Flags;
use nc06::predict::logmix::LogMixParams;
use nc06::predict::{Predictor, PredictorConfig};
use nc06::Window;
use rayon::prelude::*;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

type Error = BenchError;

/// An I/O error of the logit cache at `path`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> BenchError {
    super::io_err(format!("logit cache {}", path.display()))
}

/// One configuration's result over all files.
#[derive(Clone, Debug)]
pub struct AblationRow {
    pub name: String,
    pub flags: Flags,
    pub bytes: u64,
    pub tokens: u64,
    pub bits: f64,
    pub skipped: u64,
    pub predictor_secs: f64,
}

impl AblationRow {
    pub fn bits_per_byte(&self) -> f64 {
        self.bits / self.bytes.max(1) as f64
    }
}

/// Model time per token, with and without the output layer, from the capture run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelTiming {
    pub secs_per_token: f64,
    pub secs_per_token_no_logits: f64,
}

/// Logits of every token of `streams`, stored as `V` little-endian f32 per token.
pub struct LogitCache {
    path: PathBuf,
    v: usize,
    lens: Vec<usize>,
}

const CACHE_MAGIC: &[u8; 8] = b"NCLOGIT1";

impl LogitCache {
    /// Opens the cache at `path` if it holds `streams` for a vocabulary of `v`, else
    /// runs the model over `streams` (all in lockstep, one sequence each, exactly as the
    /// engine feeds them) and writes it.
    pub fn open_or_capture(
        path: &Path,
        model: &Model,
        streams: &[TokenStream],
        window: Window,
    ) -> Result<(LogitCache, Option<ModelTiming>), Error> {
        let cache = LogitCache {
            path: path.to_path_buf(),
            v: model.n_vocab(),
            lens: streams.iter().map(|s| s.0.len()).collect(),
        };
        let timing = if cache.is_complete() {
            None
        } else {
            Some(capture(path, model, streams, window)?)
        };
        Ok((cache, timing))
    }

    /// Whether the file at `path` is a finished cache of exactly these streams.
    fn is_complete(&self) -> bool {
        let Ok(f) = std::fs::File::open(&self.path) else {
            return false;
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut r = BufReader::new(f);
        let mut word = [0u8; 8];
        if r.read_exact(&mut word).is_err() || &word != CACHE_MAGIC {
            return false;
        }
        let mut stored = Vec::new();
        for _ in 0..=self.lens.len() {
            if r.read_exact(&mut word).is_err() {
                return false;
            }
            stored.push(u64::from_le_bytes(word) as usize);
        }
        stored[0] == self.lens.len()
            && stored[1..] == self.lens[..]
            && size == self.offset(self.lens.len())
    }

    /// Where stream `stream`'s rows start (`offset(n)` is the file's size).
    fn offset(&self, stream: usize) -> u64 {
        16 + 8 * self.lens.len() as u64
            + self.lens[..stream].iter().sum::<usize>() as u64 * self.v as u64 * 4
    }

    /// The logits of stream `i`, one row of `V` per token.
    pub fn stream(&self, i: usize) -> Result<Vec<f32>, Error> {
        use std::io::{Seek, SeekFrom};
        let e = io(&self.path);
        let mut f = std::fs::File::open(&self.path).map_err(&e)?;
        f.seek(SeekFrom::Start(self.offset(i))).map_err(&e)?;
        let mut bytes = vec![0u8; self.lens[i] * self.v * 4];
        f.read_exact(&mut bytes).map_err(&e)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Steps timed with and without the output layer.
const PROBE_STEPS: usize = 256;

/// The feeds of lockstep step `step`: each stream still running gives the token before
/// `step` (BOS first), through [`Session::feed`] as the engine's workers do.
fn step_feeds(
    session: &mut Session<'_>,
    streams: &[TokenStream],
    step: usize,
    bos: u32,
    logits: bool,
) -> Result<Vec<Feed>, Error> {
    let mut feeds = Vec::with_capacity(streams.len());
    for (i, s) in streams.iter().enumerate() {
        if step >= s.0.len() {
            continue;
        }
        let token = if step == 0 { bos } else { s.0[step - 1] };
        feeds.push(session.feed(i as u32, token, logits)?);
    }
    Ok(feeds)
}

/// Runs the model over all streams in lockstep and writes their logits to `path`.
fn capture(
    path: &Path,
    model: &Model,
    streams: &[TokenStream],
    window: Window,
) -> Result<ModelTiming, Error> {
    let e = io(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = AtomicFile::create_in(dir, ".logits")?;
    let spill_dir = path.with_extension("spill");
    let mut w = BufWriter::with_capacity(1 << 22, tmp);
    w.write_all(CACHE_MAGIC).map_err(&e)?;
    w.write_all(&(streams.len() as u64).to_le_bytes())
        .map_err(&e)?;
    for s in streams {
        w.write_all(&(s.0.len() as u64).to_le_bytes()).map_err(&e)?;
    }
    // The streams advance together but are stored one after another: each stream's
    // rows go to its own spill file, concatenated at the end.
    let dir = spill_dir;
    std::fs::create_dir_all(&dir).map_err(&e)?;
    let mut spills: Vec<BufWriter<std::fs::File>> = (0..streams.len())
        .map(|i| {
            std::fs::File::create(dir.join(i.to_string()))
                .map(|f| BufWriter::with_capacity(1 << 20, f))
        })
        .collect::<Result<_, _>>()
        .map_err(&e)?;
    let n = streams.len().max(1) as u32;
    let mut session = model.session(n, window)?;
    let bos = model.bos();
    let longest = streams.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let probe = longest.min(PROBE_STEPS);
    let (mut model_secs, mut fed) = (0.0f64, 0u64);
    for step in 0..longest {
        let feeds = step_feeds(&mut session, streams, step, bos, true)?;
        let t = Instant::now();
        session.decode(&feeds)?;
        if step < probe {
            model_secs += t.elapsed().as_secs_f64();
            fed += feeds.len() as u64;
        }
        for (row, f) in feeds.iter().enumerate() {
            let l = session.logits(row);
            let spill = &mut spills[f.seq() as usize];
            for x in l {
                spill.write_all(&x.to_le_bytes()).map_err(&e)?;
            }
        }
    }
    for (i, s) in spills.into_iter().enumerate() {
        s.into_inner().map_err(|x| e(x.into_error()))?;
        let mut r = std::fs::File::open(dir.join(i.to_string())).map_err(&e)?;
        std::io::copy(&mut r, &mut w).map_err(&e)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    w.into_inner()
        .map_err(|x| e(x.into_error()))?
        .commit(path)?;

    // The same calls without the output layer, on a fresh context: what a skipped
    // token costs the model.
    drop(session);
    let mut session = model.session(n, window)?;
    let (mut probe_secs, mut probe_fed) = (0.0f64, 0u64);
    for step in 0..probe {
        let feeds = step_feeds(&mut session, streams, step, bos, false)?;
        let t = Instant::now();
        session.decode(&feeds)?;
        probe_secs += t.elapsed().as_secs_f64();
        probe_fed += feeds.len() as u64;
    }
    // Both figures cover the first `probe` steps, so attention lengths match.
    Ok(ModelTiming {
        secs_per_token: model_secs / fed.max(1) as f64,
        secs_per_token_no_logits: probe_secs / probe_fed.max(1) as f64,
    })
}

/// Replays every configuration over the cached logits of all streams.
pub fn replay(
    cache: &LogitCache,
    streams: &[TokenStream],
    text_bytes: u64,
    configs: &[(String, Flags)],
    params: LogMixParams,
    mut calibration: Option<&mut Calibration>,
) -> Result<Vec<AblationRow>, Error> {
    let v = cache.v;
    let mut rows: Vec<AblationRow> = configs
        .iter()
        .map(|(name, flags)| AblationRow {
            name: name.clone(),
            flags: *flags,
            bytes: text_bytes,
            tokens: 0,
            bits: 0.0,
            skipped: 0,
            predictor_secs: 0.0,
        })
        .collect();
    for (i, s) in streams.iter().enumerate() {
        let logits = cache.stream(i)?;
        if let Some(c) = calibration.as_deref_mut() {
            c.add_stream(&logits, v, &s.0);
        }
        let results: Vec<(f64, u64, f64)> = configs
            .par_iter()
            .map(|(_, flags)| {
                let mut p = Predictor::with_mix_params(
                    v,
                    PredictorConfig {
                        flags: *flags,
                        temperature: 1.0,
                        precision: Precision::for_vocab(v),
                    },
                    params,
                );
                let mut bits = 0.0f64;
                let t = Instant::now();
                for (k, &tok) in s.0.iter().enumerate() {
                    let want = p.prepare();
                    let l = &logits[k * v..(k + 1) * v];
                    let cdf = p.predict(want.then_some(l));
                    bits -= cdf.prob(tok as usize).log2();
                    p.update(tok);
                }
                (bits, p.skipped(), t.elapsed().as_secs_f64())
            })
            .collect();
        for (row, (bits, skipped, secs)) in rows.iter_mut().zip(results) {
            row.bits += bits;
            row.skipped += skipped;
            row.predictor_secs += secs;
            row.tokens += s.0.len() as u64;
        }
    }
    if let Some(c) = calibration {
        c.finish();
    }
    Ok(rows)
}

/// How well the model's confidence matches how often it is right, over all cached steps:
/// tokens by the probability of the model's top token (in tenths), with that
/// probability's mean and the share of steps whose coded token was the top one.
/// A calibrated model leaves a secondary estimation (SSE/APM) of it nothing to correct.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub bins: [CalibrationBin; 10],
    /// Bits saved (negative: added) by giving each step's top token its bin's hit rate,
    /// the rest scaled to match, with the hit rates known in hindsight: an optimistic
    /// bound on what recalibrating the top token can win.
    pub recalibration_bits: f64,
    /// Bits saved by a document cache, with its boost known in hindsight: every token
    /// already seen in the stream gets its probability times 2^beta (renormalised), for
    /// each of [`CACHE_BOOSTS`].
    pub cache_bits: [f64; 4],
    /// The model's own bits over the same steps.
    pub model_bits: f64,
    /// (bin, p(top), top was coded) of every step, for the recalibration bound.
    steps: Vec<(usize, f64, bool)>,
}

/// The document-cache boosts (bits) that [`Calibration`] tries.
pub const CACHE_BOOSTS: [f64; 4] = [0.1, 0.25, 0.5, 1.0];

#[derive(Clone, Copy, Debug, Default)]
pub struct CalibrationBin {
    pub tokens: u64,
    pub p_sum: f64,
    pub hits: u64,
}

impl CalibrationBin {
    pub fn mean_p(&self) -> f64 {
        self.p_sum / self.tokens.max(1) as f64
    }
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.tokens.max(1) as f64
    }
}

impl Calibration {
    /// Adds one stream: `logits` holds a row of `v` per token of `tokens`.
    fn add_stream(&mut self, logits: &[f32], v: usize, tokens: &[u32]) {
        let mut probs = Vec::new();
        let mut seen = vec![false; v];
        let mut seen_list: Vec<usize> = Vec::new();
        for (k, &tok) in tokens.iter().enumerate() {
            let sum =
                nc06::codec::softmax_into(&logits[k * v..(k + 1) * v], 1.0, &mut probs) as f64;
            let (top, p_top) =
                probs
                    .iter()
                    .enumerate()
                    .fold((0, 0.0f32), |b, (t, &p)| if p > b.1 { (t, p) } else { b });
            let p_top = p_top as f64 / sum;
            let p_tok = probs.get(tok as usize).map_or(0.0, |&p| p as f64 / sum);
            self.model_bits -= p_tok.max(f64::MIN_POSITIVE).log2();
            let bin = ((p_top * 10.0) as usize).min(9);
            let hit = top == tok as usize;
            let b = &mut self.bins[bin];
            b.tokens += 1;
            b.p_sum += p_top;
            b.hits += hit as u64;
            self.steps.push((bin, p_top, hit));
            let p_seen = seen_list.iter().map(|&t| probs[t] as f64).sum::<f64>() / sum;
            let tok_seen = seen.get(tok as usize).copied().unwrap_or(false);
            for (bits, beta) in self.cache_bits.iter_mut().zip(CACHE_BOOSTS) {
                let gain = if tok_seen { beta } else { 0.0 };
                *bits += gain - (1.0 + (beta.exp2() - 1.0) * p_seen).log2();
            }
            if let Some(x) = seen.get_mut(tok as usize).filter(|x| !**x) {
                *x = true;
                seen_list.push(tok as usize);
            }
        }
    }

    /// The recalibration bound, once every stream is in (it needs the bins' final rates).
    fn finish(&mut self) {
        self.recalibration_bits = 0.0;
        for &(bin, p, hit) in &self.steps {
            let h = self.bins[bin].hit_rate().clamp(1e-9, 1.0 - 1e-9);
            self.recalibration_bits += if hit {
                (h / p).log2()
            } else {
                ((1.0 - h) / (1.0 - p).max(1e-12)).log2()
            };
        }
    }
}

/// What `bench-ensemble` measures, from its command line.
pub struct LabOptions<'a> {
    pub cache_dir: &'a Path,
    /// `;`-separated predictor lists.
    pub configs: &'a str,
    /// Log-mixer parameters in [`LogMixParams`]' field order; missing ones default.
    pub mix: &'a [f32],
    pub chunk_size: usize,
    pub window: Window,
    pub calibration: bool,
}

/// The `bench-ensemble` command: capture (or reuse) the logits, replay every
/// configuration, print the ablation table.
pub fn run_cli(
    files: &[PathBuf],
    lab: &LabOptions<'_>,
    model: &ModelArgs,
) -> Result<(), BenchError> {
    let LabOptions {
        cache_dir,
        configs,
        mix,
        chunk_size,
        window,
        calibration: show_calibration,
    } = *lab;
    let files = if files.is_empty() {
        super::default_files()
    } else {
        files.to_vec()
    };
    if files.is_empty() {
        return Err(BenchError::Usage(
            "no FILES given and the shared corpus is not there".into(),
        ));
    }
    if !mix.is_empty() && mix.len() != 7 {
        return Err(BenchError::Usage(format!(
            "--mix-params takes 7 values (lr_llm,lr_ngram,lr_match,lr_bias,w_ngram0,w_match0,skip_bits), not {}",
            mix.len()
        )));
    }
    let mut params = LogMixParams::default();
    let fields: [&mut f32; 7] = [
        &mut params.lr_llm,
        &mut params.lr_ngram,
        &mut params.lr_match,
        &mut params.lr_bias,
        &mut params.w_ngram0,
        &mut params.w_match0,
        &mut params.skip_bits,
    ];
    for (dst, &x) in fields.into_iter().zip(mix) {
        *dst = x;
    }
    let configs: Vec<(String, Flags)> = configs
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<Flags>()
                .map(|f| (c.to_string(), f))
                .map_err(|e| BenchError::Usage(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let engine = model.engine()?;
    let opts = CompressOptions {
        chunk_size,
        window,
        ..Default::default()
    };
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    println!("mixer parameters: {params:?}");
    println!("| file | configuration | bits/byte | vs model alone | skipped | predictor µs/token | est. tokens/s (1 stream) |");
    println!("|---|---|---|---|---|---|---|");
    for file in &files {
        let data = std::fs::read(file).map_err(|source| BenchError::NoInput {
            path: file.clone(),
            source,
        })?;
        let (streams, text_bytes) = engine.token_streams(&data, &opts);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The default window keeps the names caches had before windows were a choice.
        let win = if window == Window::default() {
            String::new()
        } else {
            format!("-ctx{}-slide{}", window.ctx, window.slide)
        };
        let stem = format!(
            "{name}-{}-{}-{chunk_size}{win}",
            data.len(),
            crc32c::crc32c(&data)
        );
        let path = cache_dir.join(format!("{stem}.f32"));
        let timing_path = cache_dir.join(format!("{stem}.timing"));
        let (cache, timing) =
            LogitCache::open_or_capture(&path, engine.model(), &streams, opts.window)?;
        if let Some(t) = timing {
            let _ = std::fs::write(
                &timing_path,
                format!("{} {}\n", t.secs_per_token, t.secs_per_token_no_logits),
            );
        }
        let timing = std::fs::read_to_string(&timing_path).ok().and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some(ModelTiming {
                secs_per_token: it.next()??,
                secs_per_token_no_logits: it.next()??,
            })
        });
        // Calibration reads the same logits as the replay, in the same pass.
        let mut cal = show_calibration.then(Calibration::default);
        let rows = replay(&cache, &streams, text_bytes, &configs, params, cal.as_mut())?;
        let raw = rows
            .iter()
            .find(|r| r.flags == Flags(Flags::LLM))
            .map(|r| r.bits_per_byte());
        for r in &rows {
            let bpb = r.bits_per_byte();
            let vs = raw
                .map(|x| format!("{:+.1} %", 100.0 * (bpb / x - 1.0)))
                .unwrap_or_default();
            let us = 1e6 * r.predictor_secs / r.tokens.max(1) as f64;
            let skip = r.skipped as f64 / r.tokens.max(1) as f64;
            let est = timing
                .map(|t| {
                    let model = (1.0 - skip) * t.secs_per_token + skip * t.secs_per_token_no_logits;
                    format!("{:.1}", 1.0 / (model + us * 1e-6))
                })
                .unwrap_or_default();
            println!(
                "| {name} | {} | {bpb:.4} | {vs} | {:.1} % | {us:.0} | {est} |",
                r.name,
                100.0 * skip
            );
        }
        if let Some(c) = cal {
            println!("calibration of the model on {name}: p(top) bin, tokens, mean p(top), how often the top token was coded");
            for (i, b) in c.bins.iter().enumerate().filter(|(_, b)| b.tokens > 0) {
                println!(
                    "  {:.1}-{:.1}: {} tokens, mean {:.3}, hit {:.3}",
                    i as f64 / 10.0,
                    (i + 1) as f64 / 10.0,
                    b.tokens,
                    b.mean_p(),
                    b.hit_rate()
                );
            }
            let pct = |bits: f64| 100.0 * bits / c.model_bits.max(1e-9);
            println!(
                "  top token recalibrated by bin in hindsight: saves {:+.2} % of the model's {:.0} bits",
                pct(c.recalibration_bits),
                c.model_bits
            );
            for (bits, beta) in c.cache_bits.iter().zip(CACHE_BOOSTS) {
                println!(
                    "  document cache, seen tokens x 2^{beta}: saves {:+.2} %",
                    pct(*bits)
                );
            }
        }
        if let Some(t) = timing {
            println!(
                "model per token (first {PROBE_STEPS} steps, {} streams): {:.2} ms with logits, {:.2} ms without",
                streams.len(),
                t.secs_per_token * 1e3,
                t.secs_per_token_no_logits * 1e3
            );
        }
    }
    Ok(())
}
