//! `nacrithfs bench-engine`: throughput of the engine at several stream counts, beside
//! the raw llama.cpp lockstep decode rate for the same calls (the ceiling the engine is
//! measured against), and memory per worker.
//!
//! Every stream codes the same number of tokens, cut from consecutive pieces of the
//! input, so runs at different stream counts see the same context lengths.

use super::jobs::{DecodeJob, Work};
use super::{Engine, EngineConfig, TokenStream};
use crate::model::Model;
use crate::{Error, Result};
use nc06::predict::PredictorConfig;
use nc06::Window;
use std::sync::Arc;
use std::time::Instant;

/// One measured run.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Streams decoded together.
    pub streams: u32,
    /// `raw` (model calls only), `compress` or `decompress`.
    pub mode: &'static str,
    /// Tokens coded in all.
    pub tokens: u64,
    /// Bytes of text the tokens stand for.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Seconds inside llama.cpp decode calls, and in the predictor and coder.
    pub model_secs: f64,
    /// Seconds in the predictor and coder.
    pub cpu_secs: f64,
    /// Coded size, bits per byte of text (compress only).
    pub bits_per_byte: Option<f64>,
    /// Growth of resident memory while the run's context existed, MiB.
    pub rss_mib: f64,
}

impl BenchRow {
    /// Tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
    /// KiB of text per second.
    pub fn kb_per_s(&self) -> f64 {
        self.bytes as f64 / 1024.0 / self.seconds.max(1e-9)
    }
    /// The header of [`BenchRow::csv`]'s rows.
    pub const CSV_HEADER: &'static str = "streams,mode,tokens,seconds,tokens_per_s,kb_per_s,model_secs,cpu_secs,bits_per_byte,rss_mib";
    /// The row as CSV (columns as [`BenchRow::CSV_HEADER`]).
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{:.3},{:.2},{:.4},{:.3},{:.3},{},{:.1}",
            self.streams,
            self.mode,
            self.tokens,
            self.seconds,
            self.tokens_per_s(),
            self.kb_per_s(),
            self.model_secs,
            self.cpu_secs,
            self.bits_per_byte
                .map(|b| format!("{b:.4}"))
                .unwrap_or_default(),
            self.rss_mib
        )
    }
}

/// Resident set size of this process, MiB (0 where /proc is unavailable).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `streams` token streams of `per_stream` tokens each, from consecutive pieces of
/// `tokens` (wrapping around when the input is short).
pub fn cut_streams(tokens: &[u32], streams: u32, per_stream: usize) -> Vec<TokenStream> {
    if tokens.is_empty() {
        return Vec::new();
    }
    (0..streams as usize)
        .map(|s| {
            TokenStream(
                (0..per_stream)
                    .map(|i| tokens[(s * per_stream + i) % tokens.len()])
                    .collect(),
            )
        })
        .collect()
}

/// Feeds the streams through one context in lockstep, asking for every row's logits
/// and doing nothing with them: the model's share of a step, alone. It runs on a thread
/// of its own that ends before the engine starts: OpenMP keeps a thread team for every
/// thread that ever decoded, and with more of those threads than cores it stops
/// spinning at llama.cpp's barriers, which made the engine measured after this loop
/// look 2.7 times slower than it is.
fn raw(model: &Model, streams: &[TokenStream], window: Window) -> Result<(f64, f64)> {
    std::thread::scope(|s| {
        s.spawn(|| raw_here(model, streams, window))
            .join()
            .unwrap_or(Err(Error::Panicked("the raw decode loop")))
    })
}

fn raw_here(model: &Model, streams: &[TokenStream], window: Window) -> Result<(f64, f64)> {
    let n_seq = streams.len() as u32;
    let rss0 = rss_mib();
    let mut session = model.session(n_seq, window)?;
    let len = streams.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let t = Instant::now();
    let mut feeds = Vec::with_capacity(streams.len());
    let mut rss = 0.0f64;
    for i in 0..len {
        feeds.clear();
        for (s, st) in streams.iter().enumerate() {
            let token = if i == 0 { model.bos() } else { st.0[i - 1] };
            feeds.push(session.feed(s as u32, token, true)?);
        }
        session.decode(&feeds)?;
        if i == 0 {
            rss = rss_mib() - rss0;
        }
    }
    Ok((t.elapsed().as_secs_f64(), rss))
}

/// Runs raw, compress and decompress at each stream count.
pub fn run(
    model: Arc<Model>,
    text: &[u8],
    streams: &[u32],
    per_stream: usize,
    window: Window,
    predictor: PredictorConfig,
    mut report: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let tokens = model.tokenize(text);
    if tokens.is_empty() {
        return Err(Error::NoText);
    }
    let bytes_per_token = text.len() as f64 / tokens.len() as f64;
    let mut rows = Vec::new();
    for &s in streams {
        let s = s.max(1);
        let work = cut_streams(&tokens, s, per_stream);
        let n_tokens = (s as usize * per_stream) as u64;
        let bytes = (n_tokens as f64 * bytes_per_token) as u64;
        let mut push = |row: BenchRow| {
            report(&row);
            rows.push(row);
        };
        let (secs, rss) = raw(&model, &work, window)?;
        push(BenchRow {
            streams: s,
            mode: "raw",
            tokens: n_tokens,
            bytes,
            seconds: secs,
            model_secs: secs,
            cpu_secs: 0.0,
            bits_per_byte: None,
            rss_mib: rss,
        });

        let engine = Engine::new(
            model.clone(),
            EngineConfig {
                streams: s,
                workers: 1,
            },
        );
        let rss0 = rss_mib();
        let t = Instant::now();
        let (coded, st) = engine.encode(&work, window, predictor, None)?;
        let secs = t.elapsed().as_secs_f64();
        let coded_bytes: usize = coded.iter().map(|c| c.bytes.len()).sum();
        push(BenchRow {
            streams: s,
            mode: "compress",
            tokens: n_tokens,
            bytes,
            seconds: secs,
            model_secs: st.model_secs,
            cpu_secs: st.cpu_secs,
            bits_per_byte: Some(coded_bytes as f64 * 8.0 / bytes.max(1) as f64),
            rss_mib: rss_mib() - rss0,
        });

        let jobs = coded
            .iter()
            .map(|c| Work::Decode(DecodeJob::new(c.bytes.clone(), c.tokens)))
            .collect();
        let t = Instant::now();
        let (back, st) = engine.run(jobs, window, predictor, None, crate::Priority::Foreground)?;
        let secs = t.elapsed().as_secs_f64();
        for (i, (w, want)) in back.into_iter().zip(&work).enumerate() {
            let ok = matches!(&w, Work::Decode(j) if j.tokens() == &want.0[..]);
            if !ok {
                return Err(Error::VerifyFailed { chunk: i });
            }
        }
        push(BenchRow {
            streams: s,
            mode: "decompress",
            tokens: n_tokens,
            bytes,
            seconds: secs,
            model_secs: st.model_secs,
            cpu_secs: st.cpu_secs,
            bits_per_byte: None,
            rss_mib: rss_mib() - rss0,
        });
    }
    Ok(rows)
}
