//! The portable engine: the forward pass of a GGUF language model written once, in
//! integer arithmetic and IEEE basic operations of a fixed order, so that its logits
//! are the same bits on every machine, instruction set, thread count and batch
//! (issue 17; the arithmetic is specified in docs/ENGINE.md).
//!
//! - [`gguf`]: the GGUF reader;
//! - [`num`]: f16 conversions and our own exp, ln, sin, cos, SiLU;
//! - [`quant`]: the quantized matrices and 8-bit activations, the integer dot products;
//! - [`Vocab`]: the tokenizer and each token's bytes, from the GGUF vocabulary alone;
//! - [`Model`] and [`Session`]: the llama architecture (SmolLM2), stepped over many
//!   sequences at once, each with its own f16 key/value cache and sliding window.
//!
//! - [`device`]: the same step as kernels for a CUDA GPU, or the host as their
//!   emulator.
//!
//! It needs no llama.cpp: only `nc06` (whose exp2 and fixed sums it shares).

pub mod device;
pub mod gguf;
mod model;
pub mod num;
pub mod quant;
mod session;
mod tokenizer;

pub use model::{Config, LoadError, Model};
pub use session::{Feed, Session, StepError};
pub use tokenizer::Vocab;

/// The version of the arithmetic in docs/ENGINE.md. Anything that changes a bit of the
/// logits bumps it, and it is part of every fingerprint this engine gives.
pub const SPEC_VERSION: u32 = 1;

/// `$XDG_CACHE_HOME/nacrithfs` or `~/.cache/nacrithfs`: where fetched models are, and
/// where the device's compiled kernels are kept (`cuda/`).
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("nacrithfs")
}
