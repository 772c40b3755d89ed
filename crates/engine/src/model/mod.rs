//! The language model: llama.cpp through `llama-cpp-2`, pinned to the settings under
//! which its logits are bit-identical across runs, thread counts and batch compositions.

mod llama;

pub use llama::{fingerprint_of, Feed, Model, ModelError, ModelOptions, Session};

use std::path::PathBuf;

/// Environment variable naming the GGUF model to use when `--model` is not given.
pub const MODEL_ENV: &str = "NACRITHFS_MODEL";
/// File name of the default model inside the cache directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the model is looked for: `--model`, else `$NACRITHFS_MODEL`, else the cache path.
pub fn resolve_model_path(cli: Option<PathBuf>) -> Result<PathBuf, ModelError> {
    if let Some(p) = cli {
        return existing(p);
    }
    if let Some(p) = std::env::var_os(MODEL_ENV) {
        return existing(PathBuf::from(p));
    }
    existing(default_model_path())
}

fn existing(p: PathBuf) -> Result<PathBuf, ModelError> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::NotFound(p))
    }
}

/// `$XDG_CACHE_HOME/nacrithfs/<model>` or `~/.cache/nacrithfs/<model>`.
pub fn default_model_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("nacrithfs").join(DEFAULT_MODEL_FILE)
}
