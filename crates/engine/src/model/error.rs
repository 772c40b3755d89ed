//! What can go wrong loading and running a model.

use std::path::PathBuf;
#[cfg(feature = "llama")]
use std::sync::Arc;

/// What can go wrong with the model or llama.cpp. llama.cpp's own errors are kept as
/// sources.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// There is no model file at this path.
    #[error("no model at {}; run scripts/fetch-model.sh to fetch the default model, or pass --model PATH / set NACRITHFS_MODEL", .0.display())]
    NotFound(PathBuf),
    /// A model named by its short name has not been fetched.
    #[error("model {name} is not fetched (no {}); fetch it with scripts/fetch-model.sh {name}", .path.display())]
    NotFetched {
        /// Its short name.
        name: &'static str,
        /// Where it would be.
        path: PathBuf,
    },
    /// The model file cannot be read (to fingerprint it).
    #[error("cannot read model {}", .path.display())]
    Read {
        /// The model file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// llama.cpp does not take the file as a model.
    #[cfg(feature = "llama")]
    #[error("llama.cpp could not load {} as a GGUF model", .path.display())]
    Load {
        /// The model file.
        path: PathBuf,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    /// llama.cpp's backend did not start.
    #[cfg(feature = "llama")]
    #[error("llama.cpp backend failed to start")]
    Backend(#[source] Arc<llama_cpp_2::LlamaCppError>),
    /// llama.cpp would run the model (`--backend llama`, or a model the portable
    /// engine does not run), but this build has none.
    #[error("model {}: {why}, and this nacrithfs is built without llama.cpp (the `llama` feature)", .path.display())]
    NoLlama {
        /// The model file.
        path: PathBuf,
        /// Why llama.cpp was wanted.
        why: String,
    },
    /// The portable engine cannot run the model file.
    #[error("portable engine: {source}")]
    Portable {
        /// The model file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<nacrithfs_portable::LoadError>,
    },
    /// The portable engine's threads could not be started.
    #[error("cannot start the portable engine's threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    /// A step of the portable engine was refused.
    #[error("portable engine step: {0}")]
    Step(#[source] nacrithfs_portable::StepError),
    /// The portable engine's GPU failed (or `--device cuda` found none).
    #[error("portable engine on the GPU: {0}")]
    Device(#[source] nacrithfs_portable::device::DeviceError),
    /// A step of the portable engine on the GPU failed.
    #[error("portable engine step on the GPU: {0}")]
    DeviceStep(#[source] nacrithfs_portable::device::DeviceStepError),
    /// The GPU's logits are not the CPU engine's bits (a driver or compiler that breaks
    /// the spec): what it coded would not decode elsewhere, so it is not used.
    #[error("the GPU ({0}) does not compute the portable engine's logits bit for bit; its blobs would not decode on other machines: run with --device cpu")]
    DeviceDisagrees(String),
    /// No context of this size could be made (usually: not enough memory).
    #[cfg(feature = "llama")]
    #[error("llama.cpp could not create a context for {n_seq} sequences of {n_ctx} tokens")]
    Context {
        /// Sequences asked for.
        n_seq: u32,
        /// Positions per sequence.
        n_ctx: u32,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    /// A token could not be added to the batch.
    #[cfg(feature = "llama")]
    #[error("llama.cpp batch is full")]
    Batch(#[source] llama_cpp_2::llama_batch::BatchAddError),
    /// A decode call failed.
    #[cfg(feature = "llama")]
    #[error("llama.cpp decode failed")]
    Decode(#[source] llama_cpp_2::DecodeError),
    /// A KV cache operation (clear, slide) failed.
    #[cfg(feature = "llama")]
    #[error("KV cache operation failed")]
    Kv(#[source] llama_cpp_2::context::kv_cache::KvCacheConversionError),
    /// A feed for a sequence the context does not have.
    #[error("sequence {seq} of a context with {n_seq}")]
    NoSequence {
        /// The sequence asked for.
        seq: u32,
        /// Sequences in the context.
        n_seq: u32,
    },
}

impl ModelError {
    /// Whether this is a lack of memory (a context too large to make).
    pub fn out_of_memory(&self) -> bool {
        #[cfg(feature = "llama")]
        if let ModelError::Context { .. } = self {
            return true;
        }
        false
    }
}
