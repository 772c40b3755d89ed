//! Running the model over many token streams at once.
//!
//! One llama.cpp context holds up to `streams` sequences. Every decode call carries
//! exactly one token for each active stream (the determinism rule), so chunks of one
//! file, or of many files, are coded side by side; when a stream ends its sequence is
//! cleared and the next waiting stream takes its place (continuous batching).

mod jobs;
mod pipeline;

pub use jobs::{CodedStream, TokenStream};
pub use pipeline::{CompressOptions, Compressed, Stats};

use crate::codec::Cdf;
use crate::model::{Model, Window};
use crate::model::{Predictor, PredictorConfig};
use crate::Error;
use std::sync::Arc;

/// What the engine runs: a stream that feeds the model one token at a time and codes
/// one token from each prediction.
pub(crate) trait Job {
    /// Tokens this job will code in total.
    fn len(&self) -> u32;
    /// Tokens coded so far.
    fn done(&self) -> u32;
    /// The token to feed next: the last coded token (the BOS before the first).
    fn input(&self, bos: u32) -> u32;
    /// Codes the next token with `cdf`, returning it.
    fn code(&mut self, cdf: &Cdf) -> Result<u32, Error>;
}

/// What one [`Engine::run`] did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub tokens: u64,
    /// Tokens coded without the model's logits (confidence skip).
    pub skipped: u64,
    pub model_secs: f64,
    pub cpu_secs: f64,
}

/// Engine settings that do not change what is coded.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences per llama.cpp context, i.e. streams decoded per call.
    pub streams: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { streams: crate::DEFAULT_STREAMS }
    }
}

/// The model plus how to drive it.
pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
}

/// Called with the number of tokens coded since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

impl Engine {
    pub fn new(model: Arc<Model>, config: EngineConfig) -> Engine {
        Engine { model, config }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Runs `jobs` to completion, at most `config.streams` at a time.
    pub(crate) fn run(
        &self,
        jobs: &mut [&mut dyn Job],
        window: Window,
        predictor: PredictorConfig,
        progress: Option<Progress<'_>>,
    ) -> Result<RunStats, Error> {
        let pending: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].len() > 0).collect();
        if pending.is_empty() {
            return Ok(RunStats::default());
        }
        let n_seq = (self.config.streams.max(1) as usize).min(pending.len()) as u32;
        let mut session = self.model.session(n_seq, window)?;
        let bos = self.model.bos();
        struct Slot {
            job: usize,
            pos: u32,
            predictor: Predictor,
            wants_logits: bool,
        }
        let mut slots: Vec<Option<Slot>> = (0..n_seq).map(|_| None).collect();
        let mut queue = pending.into_iter();
        let mut feeds = Vec::with_capacity(n_seq as usize);
        let mut order = Vec::with_capacity(n_seq as usize);
        let (mut t_model, mut t_cpu, mut steps) = (0f64, 0f64, 0u64);
        let mut stats = RunStats::default();
        loop {
            feeds.clear();
            order.clear();
            for (seq, slot) in slots.iter_mut().enumerate() {
                if slot.is_none() {
                    if let Some(job) = queue.next() {
                        *slot = Some(Slot { job, pos: 0, predictor: Predictor::new(self.model.n_vocab(), predictor), wants_logits: true });
                    }
                }
                let Some(s) = slot else { continue };
                if s.pos == window.ctx {
                    s.pos = session.slide(seq as u32, s.pos)?;
                }
                let token = jobs[s.job].input(bos);
                s.wants_logits = s.predictor.prepare();
                feeds.push(crate::model::Feed { seq: seq as u32, token, pos: s.pos, logits: s.wants_logits });
                order.push(seq);
            }
            if feeds.is_empty() {
                log::debug!(
                    "engine: {steps} calls, {} tokens ({} skipped), model {t_model:.2}s, predictor+coder {t_cpu:.2}s, {n_seq} streams",
                    stats.tokens,
                    stats.skipped
                );
                stats.model_secs = t_model;
                stats.cpu_secs = t_cpu;
                return Ok(stats);
            }
            let t = std::time::Instant::now();
            session.decode(&feeds)?;
            let t2 = std::time::Instant::now();
            t_model += (t2 - t).as_secs_f64();
            steps += 1;
            for (i, &seq) in order.iter().enumerate() {
                let Some(s) = slots[seq].as_mut() else { continue };
                let logits = s.wants_logits.then(|| session.logits(i));
                let cdf = s.predictor.predict(logits);
                let token = jobs[s.job].code(cdf)?;
                s.predictor.update(token);
                s.pos += 1;
                stats.tokens += 1;
                if jobs[s.job].done() == jobs[s.job].len() {
                    stats.skipped += s.predictor.skipped();
                    session.clear(seq as u32)?;
                    slots[seq] = None;
                }
            }
            t_cpu += t2.elapsed().as_secs_f64();
            if let Some(p) = progress {
                p(order.len() as u64);
            }
        }
    }
}
