//! The engines of every model a blob may name. A blob records the fingerprint of the
//! model that coded its text; the default model compresses, and a blob of another
//! known model is decoded by that model, loaded from the cache the first time a blob
//! needs it. So a mount whose default is Gemma still reads the SmolLM2 blobs it holds,
//! and the reverse.

use crate::model::{cached_by_digest, Backend, Model, ModelError, ModelOptions};
use crate::Engine;
use nc06::format::Blob;
use nc06::Fingerprint;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The default engine and the others loaded so far, by model digest.
pub struct EngineSet {
    default: Arc<Engine>,
    options: ModelOptions,
    /// Every model loaded for a blob, by model digest and backend, whatever its
    /// fingerprint turned out to be: a model whose build differs is not loaded again
    /// for the next blob.
    others: Mutex<HashMap<ModelKey, Arc<Engine>>>,
}

/// A model file (the first 8 bytes of its SHA-256) run by a backend.
type ModelKey = ([u8; 8], Backend);

impl EngineSet {
    /// A set whose default is `default`; other models load with `options` and the
    /// default's engine settings.
    pub fn new(default: Arc<Engine>, options: ModelOptions) -> EngineSet {
        EngineSet {
            default,
            options,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The engine that compresses.
    pub fn default_engine(&self) -> &Arc<Engine> {
        &self.default
    }

    /// The engine whose model and build give `fp`: the default, or a known model found
    /// in the cache (loaded now if it was not) with the backend that coded the blob
    /// (llama.cpp or the portable engine). `None` when no model at hand gives it.
    pub fn find(&self, fp: Fingerprint) -> Result<Option<Arc<Engine>>, ModelError> {
        if self.default.model().fingerprint() == fp {
            return Ok(Some(self.default.clone()));
        }
        let key = (fp.model, Backend::of(&fp));
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = others.get(&key) {
            return Ok((e.model().fingerprint() == fp).then(|| e.clone()));
        }
        let Some((known, path)) = cached_by_digest(&fp.model) else {
            return Ok(None);
        };
        let options = ModelOptions {
            backend: key.1.into(),
            ..self.options.clone()
        };
        let model = Model::load(&path, &options)?;
        log::info!(
            "loaded model {} ({} backend, {}) for blobs it coded",
            known.name,
            key.1.name(),
            model.fingerprint()
        );
        let engine = Arc::new(Engine::new(Arc::new(model), self.default.config().clone()));
        others.insert(key, engine.clone());
        Ok((engine.model().fingerprint() == fp).then_some(engine))
    }

    /// The engine to decode `blob` with: the one of its model when that is at hand,
    /// else the default, which refuses the blob's text with an error that names the
    /// model and how to fetch it (its binary parts decode with any engine).
    pub fn decoder(&self, blob: &Blob) -> Arc<Engine> {
        if blob.chunks.is_empty() {
            return self.default.clone();
        }
        match self.find(blob.header.fingerprint) {
            Ok(Some(e)) => e,
            Ok(None) => self.default.clone(),
            Err(e) => {
                log::warn!("cannot load the model of a blob: {e}");
                self.default.clone()
            }
        }
    }
}
