//! Shared set-up for tests that run the real model.
#![allow(dead_code)]

use nacrithfs_engine::model::{resolve_model_path, Backend, Model, ModelOptions};
use nacrithfs_engine::{Engine, EngineConfig};
use std::sync::{Arc, OnceLock};

/// The real default model, loaded once per test binary. A missing model fails loudly:
/// CI fetches it with scripts/fetch-model.sh, so its absence is a set-up bug.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = resolve_model_path(None).expect("model missing: run scripts/fetch-model.sh");
            Arc::new(Model::load(&path, &ModelOptions::default()).expect("model loads"))
        })
        .clone()
}

/// The default model in the portable engine itself (no llama.cpp), loaded once per test
/// binary.
pub fn portable_model() -> &'static nacrithfs_portable::Model {
    static M: OnceLock<nacrithfs_portable::Model> = OnceLock::new();
    M.get_or_init(|| {
        let path = nacrithfs_engine::model::default_model_path();
        nacrithfs_portable::Model::load(&path)
            .expect("the default model loads in the portable engine")
    })
}

/// The default model run by llama.cpp, which codes the blobs of `--backend llama` (the
/// default backend, `auto`, runs the portable engine on it).
pub fn llama_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = resolve_model_path(None).expect("model missing: run scripts/fetch-model.sh");
            let opts = ModelOptions {
                backend: Backend::Llama.into(),
                ..Default::default()
            };
            Arc::new(Model::load(&path, &opts).expect("model loads in llama.cpp"))
        })
        .clone()
}

pub fn engine(streams: u32) -> Engine {
    engine_of(model(), streams)
}

pub fn llama_engine(streams: u32) -> Engine {
    engine_of(llama_model(), streams)
}

pub fn engine_of(model: Arc<Model>, streams: u32) -> Engine {
    Engine::new(
        model,
        EngineConfig {
            streams,
            workers: 1,
        },
    )
}

pub const ENGLISH: &str = include_str!("../data/english.txt");
pub const MULTILINGUAL: &str = include_str!("../data/multilingual.txt");

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}
