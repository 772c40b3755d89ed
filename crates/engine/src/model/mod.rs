//! The language model: llama.cpp through `llama-cpp-2`, pinned to the settings under
//! which its logits are bit-identical across runs, thread counts and batch compositions,
//! or the portable engine, whose logits are the same bits on every machine.

mod error;
#[cfg(feature = "llama")]
mod llama;
#[cfg(not(feature = "llama"))]
#[path = "no_llama.rs"]
mod llama;
mod loaded;
mod options;
mod portable;
mod session;

pub use error::ModelError;
pub use llama::release_threads;
pub use loaded::{fingerprint_of, Model};
pub use options::{DeviceChoice, ModelOptions, DEVICE_ENV};
pub use session::{Feed, Session};

/// Whether this build has llama.cpp (the `llama` feature): without it the portable
/// engine runs every model, and llama.cpp's blobs cannot be read.
pub const HAS_LLAMA: bool = cfg!(feature = "llama");

/// The version of the portable engine's arithmetic (docs/ENGINE.md).
pub use nacrithfs_portable::SPEC_VERSION as PORTABLE_SPEC_VERSION;

/// Version of everything after the logits (softmax, CDF, coder). Part of every backend
/// descriptor, so changing that code changes the fingerprint.
const PREDICTOR_VERSION: u32 = 2;

use std::path::PathBuf;

/// Which engine computes a model's logits. Recorded in every blob (its fingerprint's
/// backend digest), so a blob is always decoded by the engine that coded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// llama.cpp: bit-identical only on the same build (version, SIMD features).
    Llama,
    /// The portable engine (docs/ENGINE.md): bit-identical on every machine.
    Portable,
}

impl Backend {
    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Llama => "llama",
            Backend::Portable => "portable",
        }
    }

    /// The backend called `name`.
    pub fn parse(name: &str) -> Option<Backend> {
        [Backend::Llama, Backend::Portable]
            .into_iter()
            .find(|b| b.name() == name)
    }

    /// The backend that gives fingerprints like `fp`: the portable engine when its
    /// backend digest is this build's portable spec, else llama.cpp.
    pub fn of(fp: &nc06::Fingerprint) -> Backend {
        // The digest is the same for the whole run: hashed once, not per blob opened.
        static PORTABLE: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
        let portable = PORTABLE.get_or_init(|| {
            nc06::Fingerprint::new(&[0; 8], &portable::portable_descriptor()).backend
        });
        if fp.backend == *portable {
            Backend::Portable
        } else {
            Backend::Llama
        }
    }
}

/// Which backend codes new blobs (`--backend`, the mount's `backend=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The portable engine where it runs the model file (the llama architecture with
    /// Q4_1/Q8_0 weights, as the default SmolLM2), so that blobs decode on any machine;
    /// llama.cpp for the others (Gemma 3).
    #[default]
    Auto,
    /// Always this backend; a model the portable engine cannot run is an error.
    Only(Backend),
}

impl BackendChoice {
    /// The choice called `name` (`auto`, `llama`, `portable`).
    pub fn parse(name: &str) -> Option<BackendChoice> {
        if name == "auto" {
            return Some(BackendChoice::Auto);
        }
        Backend::parse(name).map(BackendChoice::Only)
    }
}

impl From<Backend> for BackendChoice {
    fn from(b: Backend) -> BackendChoice {
        BackendChoice::Only(b)
    }
}

/// Environment variable naming the GGUF model to use when `--model` is not given.
pub const MODEL_ENV: &str = "NACRITHFS_MODEL";
/// File name of the default model inside the cache directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A model known by a short name: what `scripts/fetch-model.sh NAME` puts in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// The name `--model` and `$NACRITHFS_MODEL` take.
    pub name: &'static str,
    /// Its file in the cache directory.
    pub file: &'static str,
    /// Under what terms it is used.
    pub license: &'static str,
    /// The file's SHA-256, in hex (a blob's fingerprint holds its first 8 bytes).
    pub sha256: &'static str,
}

/// The models fetch-model.sh knows; the first is the default.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        file: DEFAULT_MODEL_FILE,
        license: "Apache-2.0",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        license: "Gemma Terms of Use",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// The known model called `name`, if any.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The known model whose file a fingerprint's model digest (the first 8 bytes of its
/// SHA-256) comes from.
pub fn known_by_digest(model: &[u8; 8]) -> Option<&'static KnownModel> {
    let hex: String = model.iter().map(|b| format!("{b:02x}")).collect();
    KNOWN_MODELS.iter().find(|m| m.sha256.starts_with(&hex))
}

/// The known model whose file a fingerprint's model digest comes from, with that
/// file's path, when it is in the cache: what decoding a blob of that model loads.
pub fn cached_by_digest(model: &[u8; 8]) -> Option<(&'static KnownModel, PathBuf)> {
    let known = known_by_digest(model)?;
    let path = cache_dir().join(known.file);
    path.is_file().then_some((known, path))
}

/// How to get the model a blob was coded with, for messages: its name and the
/// command that fetches it (a mount and `decompress` then find it by the blob's
/// fingerprint), or that it is not one this project knows.
pub fn model_hint(model: &[u8; 8]) -> String {
    match known_by_digest(model) {
        Some(m) => format!(
            "the blob's model is {}: fetch it with scripts/fetch-model.sh {} (blobs find their model in the cache), or pass --model {}",
            m.name, m.name, m.name
        ),
        None => {
            "the blob's model is not one fetch-model.sh knows: pass --model with the same GGUF file"
                .into()
        }
    }
}

/// What a blob whose fingerprint is `blob` needs when the model at hand gives `ours`:
/// its model (see [`model_hint`]), or, when the model is the same, the inference build
/// that made it.
pub fn mismatch_hint(blob: &nc06::Fingerprint, ours: &nc06::Fingerprint) -> String {
    if blob.model == ours.model && Backend::of(blob) != Backend::of(ours) {
        return format!(
            "same model file, but the blob was coded by the {} backend: decode it with \
             --backend {}",
            Backend::of(blob).name(),
            Backend::of(blob).name()
        );
    }
    if blob.model == ours.model {
        "same model file, but another inference build (llama.cpp version or CPU/GPU \
         features) made the blob: decode it with that build"
            .into()
    } else {
        model_hint(&blob.model)
    }
}

/// Where the model is looked for: `--model`, else `$NACRITHFS_MODEL`, else the cache
/// path of the default. Either may be a path or a known model's name.
pub fn resolve_model_path(cli: Option<PathBuf>) -> Result<PathBuf, ModelError> {
    if let Some(p) = cli {
        return named_or_path(p);
    }
    if let Some(p) = std::env::var_os(MODEL_ENV) {
        return named_or_path(PathBuf::from(p));
    }
    existing(default_model_path())
}

/// A known model's cached file for its name, or the path itself. A file of that name
/// in the working directory wins: a name never shadows a real path.
fn named_or_path(p: PathBuf) -> Result<PathBuf, ModelError> {
    match p.to_str().and_then(known_model) {
        Some(m) if !p.is_file() => {
            let path = cache_dir().join(m.file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::NotFetched { name: m.name, path })
            }
        }
        _ => existing(p),
    }
}

fn existing(p: PathBuf) -> Result<PathBuf, ModelError> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::NotFound(p))
    }
}

/// `$XDG_CACHE_HOME/nacrithfs` or `~/.cache/nacrithfs`: where fetched models are.
pub use nacrithfs_portable::cache_dir;

/// The default model's path in the cache directory.
pub fn default_model_path() -> PathBuf {
    cache_dir().join(DEFAULT_MODEL_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_in_the_cache_and_paths_stay_paths() {
        for m in KNOWN_MODELS {
            let want = cache_dir().join(m.file);
            match named_or_path(PathBuf::from(m.name)) {
                Ok(p) => assert_eq!(p, want),
                Err(ModelError::NotFetched { name, path }) => {
                    assert_eq!((name, path), (m.name, want));
                }
                Err(e) => panic!("{}: {e}", m.name),
            }
        }
        assert_eq!(KNOWN_MODELS[0].file, DEFAULT_MODEL_FILE);
        let gemma = [0xa5, 0xfd, 0x3b, 0x62, 0x23, 0x0a, 0xa5, 0xec];
        assert_eq!(known_by_digest(&gemma).map(|m| m.name), Some("gemma3-270m"));
        assert!(model_hint(&gemma).contains("scripts/fetch-model.sh gemma3-270m"));
        assert_eq!(known_by_digest(&[0; 8]), None);
        let e = named_or_path(PathBuf::from("no-such-model")).unwrap_err();
        assert!(matches!(e, ModelError::NotFound(_)), "{e}");
        let e = ModelError::NotFetched {
            name: "gemma3-270m",
            path: PathBuf::from("/c/g.gguf"),
        };
        assert!(e.to_string().contains("scripts/fetch-model.sh gemma3-270m"));
    }
}
