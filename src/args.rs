//! Arguments that several commands share: which model and how to run it, the context
//! window, and the shard of a corpus. Below both the commands (`cli`) and the
//! benchmarks (`bench`), which use them.

use crate::error::CliError;
use clap::Args;
use nacrithfs_engine::model::{
    cached_by_digest, resolve_model_path, Backend, BackendChoice, DeviceChoice, Model, ModelError,
    ModelOptions, MODEL_ENV,
};
use nacrithfs_engine::{Engine, EngineConfig};
use nacrithfs_pack::Shard;
use nc06::{Fingerprint, Window};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which model, and how the engine runs it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model: a path, or a name that scripts/fetch-model.sh fetches (smollm2-135m,
    /// gemma3-270m). Default: $NACRITHFS_MODEL (a path or a name), else smollm2-135m.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub model: Option<PathBuf>,
    /// Streams decoded together per model call.
    #[arg(long, default_value_t = nacrithfs_engine::DEFAULT_STREAMS)]
    pub streams: u32,
    /// llama.cpp threads per worker (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Model workers, each with its own llama.cpp context of --streams sequences. One
    /// context already uses every CPU core; use one per GPU.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Which engine computes the logits of new blobs: portable (docs/ENGINE.md: the same
    /// bits on every machine), llama (llama.cpp: blobs decode only on the same build),
    /// or auto: portable where it runs the model (SmolLM2), llama.cpp elsewhere (Gemma).
    /// A blob is always decoded by the backend that coded it.
    #[arg(long, global = true, value_name = "auto|llama|portable", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Where the portable engine runs: auto (a CUDA GPU when there is one and it passes
    /// a bit-for-bit probe against the CPU engine, else the CPU), cpu or cuda. Never
    /// changes a blob. Default: $NACRITHFS_DEVICE, else auto.
    #[arg(long, global = true, value_name = "auto|cpu|cuda", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    DeviceChoice::parse(s).ok_or_else(|| format!("unknown device {s}: auto, cpu or cuda"))
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    BackendChoice::parse(s).ok_or_else(|| format!("unknown backend {s}: auto, llama or portable"))
}

impl ModelArgs {
    /// Loads the model these arguments name and wraps it in an engine.
    pub fn engine(&self) -> Result<Engine, ModelError> {
        self.engine_at(&resolve_model_path(self.model.clone())?)
    }

    /// The engine to decode a blob whose text `fp` coded: the model that --model or
    /// $NACRITHFS_MODEL names, when one does; else the blob's own model when it is a
    /// known one in the cache; else the default. Always with the blob's backend.
    pub fn decoder_for(&self, fp: Fingerprint) -> Result<Engine, ModelError> {
        let args = ModelArgs {
            backend: Backend::of(&fp).into(),
            ..self.clone()
        };
        if self.model.is_none() && std::env::var_os(MODEL_ENV).is_none() {
            if let Some((_, path)) = cached_by_digest(&fp.model) {
                return args.engine_at(&path);
            }
        }
        args.engine()
    }

    /// How models load under these arguments.
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            threads: self.threads,
            backend: self.backend,
            device: self.device.unwrap_or_else(DeviceChoice::from_env),
            ..Default::default()
        }
    }

    fn engine_at(&self, path: &Path) -> Result<Engine, ModelError> {
        let model = Model::load(path, &self.options())?;
        log::debug!("model {}: {}", path.display(), model.fingerprint());
        Ok(Engine::new(
            Arc::new(model),
            EngineConfig {
                streams: self.streams.max(1),
                workers: self.workers.max(1),
            },
        ))
    }
}

/// The model's context window per stream, as every command that runs the model takes it.
#[derive(Args, Debug, Clone, Copy)]
pub struct WindowArgs {
    /// Model context window per stream, in tokens.
    #[arg(long, default_value_t = Window::default().ctx)]
    ctx: u32,
    /// Tokens dropped from a full window.
    #[arg(long, default_value_t = Window::default().slide)]
    slide: u32,
}

impl WindowArgs {
    /// The window from `--ctx` and `--slide`, checked.
    pub fn window(self) -> Result<Window, CliError> {
        let WindowArgs { ctx, slide } = self;
        let window = Window { ctx, slide };
        if window.is_valid() {
            Ok(window)
        } else {
            Err(CliError::Usage(format!(
                "invalid window: --ctx {ctx} --slide {slide}"
            )))
        }
    }
}

/// Which shard this process is.
#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// This process's shard, I/N with I counting from 0 (default: JOB_COMPLETION_INDEX
    /// with $NACRITHFS_SHARDS, or SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT; else the
    /// whole tree).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Number of shards when the index comes from the environment (default: $NACRITHFS_SHARDS).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
}

impl ShardArgs {
    /// The shard, from the flag or the environment; logged with where it came from.
    pub fn resolve(&self, op: &str) -> Result<Shard, CliError> {
        // Parsed here rather than by clap, so a bad value exits 64 like every usage error.
        let flag = self
            .shard
            .as_deref()
            .map(|s| {
                s.parse::<Shard>()
                    .map_err(|e| CliError::Usage(format!("--shard {e}")))
            })
            .transpose()?;
        let (shard, from) =
            nacrithfs_pack::resolve_shard(flag, self.shards, |k| std::env::var(k).ok())?;
        log::info!("{op}: shard {shard} ({from})");
        Ok(shard)
    }
}

/// `--predictors`: a predictor list, as [`nc06::format::Flags`] parses it.
pub fn predictors(list: &str) -> Result<nc06::format::Flags, CliError> {
    list.parse()
        .map_err(|e: nc06::format::UnknownPredictor| CliError::Usage(e.to_string()))
}
