//! Running the model over many token streams at once, and whole files through it.
//!
//! - [`model`]: the GGUF model through llama.cpp, its tokenizer, and multi-sequence
//!   [`Session`](model::Session)s under the determinism rules;
//! - [`Engine`]: a pool of model workers ([`pool`]); each holds one llama.cpp
//!   context with up to `streams` sequences and every decode call carries exactly one
//!   token for each active stream (the determinism rule). Every caller — compression,
//!   verification, decompression, from any thread — hands its chunks to the same pool,
//!   so chunks of one file and of different files are coded side by side;
//! - whole files ([`Engine::compress`], [`Engine::decompress`],
//!   [`Engine::decompress_range`]) and [`bench`] (`nacrithfs bench-engine`);
//! - [`EngineSet`]: an engine per model, so blobs of every cached model decode.
//!
//! What the bits mean (the container, the coder, the predictor) is the `nc06` crate's.

pub mod bench;
mod cpu_share;
mod error;
mod jobs;
pub mod model;
mod pipeline;
mod pool;
mod reuse;
mod set;
mod stream;

pub use error::{Error, Result};
pub use jobs::{CodedStream, TokenStream};
pub use nc06::format::DEFAULT_CHUNK_SIZE;
pub use pipeline::{CompressOptions, Compressed, FrameSource, Stats};
pub use reuse::BlobFrames;
pub use set::EngineSet;
pub use stream::{Coded, StreamEncoder, Streamed};

/// Default number of streams decoded together per llama.cpp call.
pub const DEFAULT_STREAMS: u32 = 16;

use jobs::Work;
use model::Model;
use nc06::codec::Cdf;
use nc06::predict::PredictorConfig;
use nc06::Window;
use pool::{Pool, Reply, Task};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

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
    /// Tokens coded.
    pub tokens: u64,
    /// Tokens coded without the model's logits (confidence skip).
    pub skipped: u64,
    /// Seconds inside llama.cpp decode calls (each task's share).
    pub model_secs: f64,
    /// Seconds in the predictor and coder.
    pub cpu_secs: f64,
}

/// How urgently a request's chunks are coded. Never changes what is coded.
#[derive(Clone, Debug, Default)]
pub enum Priority {
    /// Someone is waiting for it (a read, a compression): coded before background
    /// work, and contexts are sized for it.
    #[default]
    Foreground,
    /// Work done ahead of need (the rest of a file that is being read in order): coded
    /// in the sequences foreground work leaves free, and taken out of its sequence (to
    /// be coded again from its start later) when foreground work needs the room. Once
    /// the flag is set (someone started waiting for it), it is foreground work from
    /// then on: a reader waiting on a read-ahead never waits behind other work.
    Background(Arc<AtomicBool>),
}

impl Priority {
    /// Background work that is not waited for yet.
    pub fn background() -> Priority {
        Priority::Background(Arc::new(AtomicBool::new(false)))
    }

    /// Whether it is background work now.
    pub fn is_background(&self) -> bool {
        match self {
            Priority::Foreground => false,
            Priority::Background(wanted) => !wanted.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Engine settings that do not change what is coded.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences per llama.cpp context, i.e. streams decoded per call.
    pub streams: u32,
    /// Model workers, each with its own context (one per GPU; one on a CPU, where a
    /// single context already uses every core).
    pub workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            streams: DEFAULT_STREAMS,
            workers: 1,
        }
    }
}

/// The model plus the workers that drive it.
pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    /// Started on first use, so an engine that only reads headers costs nothing.
    pool: OnceLock<Result<Pool, Arc<Error>>>,
    /// Requests running on the model now (binary frames take every core only when 0).
    busy: std::sync::atomic::AtomicUsize,
}

/// Counts a request as running on the model while it lives.
struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a long run reports how far it is, in tokens coded (a closure `Fn(u64)` is
/// one: it gets the tokens coded since the last call).
pub trait ProgressSink: Sync {
    /// The tokens the whole run will code, told once before the first
    /// [`ProgressSink::add`] (with verification, each token counts twice: coded, then
    /// decoded back).
    fn total(&self, _tokens: u64) {}
    /// `n` more tokens coded.
    fn add(&self, n: u64);
}

impl<F: Fn(u64) + Sync> ProgressSink for F {
    fn add(&self, n: u64) {
        self(n)
    }
}

/// A run's progress sink.
pub type Progress<'a> = &'a dyn ProgressSink;

impl Engine {
    /// An engine over `model`; its workers start on first use.
    pub fn new(model: Arc<Model>, config: EngineConfig) -> Engine {
        Engine {
            model,
            config,
            pool: OnceLock::new(),
            busy: Default::default(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether no request is running on the model now.
    pub fn model_idle(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Background streams taken out of their sequence to make room for foreground
    /// work since the engine started (each started over later).
    pub fn streams_restarted(&self) -> u64 {
        match self.pool.get() {
            Some(Ok(p)) => p.restarted(),
            _ => 0,
        }
    }

    fn pool(&self) -> Result<&Pool, Error> {
        self.pool
            .get_or_init(|| {
                Pool::start(self.model.clone(), self.config.workers, self.config.streams)
                    .map_err(Arc::new)
            })
            .as_ref()
            .map_err(|e| Error::Shared(e.clone()))
    }

    /// Runs `works` to completion on the worker pool and gives them back in order.
    /// The first failure cancels the request's other tasks and is returned.
    pub(crate) fn run(
        &self,
        mut works: Vec<Work>,
        window: Window,
        predictor: PredictorConfig,
        progress: Option<Progress<'_>>,
        priority: Priority,
    ) -> Result<(Vec<Work>, RunStats), Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut slots: Vec<Option<Work>> = Vec::with_capacity(works.len());
        let mut tasks = Vec::new();
        for (id, work) in works.drain(..).enumerate() {
            if work.len() == 0 {
                slots.push(Some(work));
            } else {
                slots.push(None);
                tasks.push(Task {
                    id,
                    work,
                    window,
                    predictor,
                    priority: priority.clone(),
                    reply: tx.clone(),
                    cancel: cancel.clone(),
                });
            }
        }
        drop(tx);
        let mut stats = RunStats::default();
        if tasks.is_empty() {
            return Ok((slots.into_iter().flatten().collect(), stats));
        }
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _busy = Busy(&self.busy);
        self.pool()?.submit(tasks)?;
        let mut first_err = None;
        // Ends when every task has reported and dropped its reply sender.
        for reply in rx {
            match reply {
                Reply::Restarted(n) => {
                    // Taken out of its sequence and queued again: its tokens so far
                    // will be coded again.
                    stats.tokens = stats.tokens.saturating_sub(n);
                }
                Reply::Progress(n) => {
                    stats.tokens += n;
                    if let Some(p) = progress {
                        p.add(n);
                    }
                }
                Reply::Done { id, result, cost } => {
                    stats.model_secs += cost.model_secs;
                    stats.cpu_secs += cost.cpu_secs;
                    stats.skipped += cost.skipped;
                    match result {
                        Ok(w) => slots[id] = Some(w),
                        Err(e) => {
                            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let n = slots.len();
        let out: Vec<Work> = slots.into_iter().flatten().collect();
        if out.len() != n {
            return Err(Error::Stopped);
        }
        Ok((out, stats))
    }
}
