//! A build without llama.cpp (the `llama` feature off): the portable engine alone. Its
//! types have no values, so the code that dispatches between backends needs no
//! `cfg`; asking for llama.cpp is an error naming the missing feature.

use super::{ModelError, ModelOptions};
use nc06::Window;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::path::Path;

/// No model is ever loaded by llama.cpp here.
pub(super) enum Weights {}

/// The error for `path`; the caller says why llama.cpp was wanted.
fn missing(path: &Path) -> ModelError {
    ModelError::NoLlama {
        path: path.to_path_buf(),
        why: "it needs llama.cpp".into(),
    }
}

impl Weights {
    pub(super) fn load(
        path: &Path,
        _: &ModelOptions,
    ) -> Result<(Weights, String, bool), ModelError> {
        Err(missing(path))
    }

    pub(super) fn n_vocab(&self) -> usize {
        match *self {}
    }

    pub(super) fn bos(&self) -> u32 {
        match *self {}
    }

    pub(super) fn tokenize(&self, _: &[u8]) -> Vec<u32> {
        match *self {}
    }

    pub(super) fn detokenize_into(&self, _: &[u32], _: &mut Vec<u8>) {
        match *self {}
    }

    pub(super) fn session(&self, _: u32, _: Window, _: i32) -> Result<Session<'_>, ModelError> {
        match *self {}
    }
}

pub(super) fn descriptor(path: &Path, _: &ModelOptions) -> Result<String, ModelError> {
    Err(missing(path))
}

/// No llama.cpp context is ever made here.
pub(super) struct Session<'m>(Infallible, PhantomData<&'m ()>);

/// Nor any feed for one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Feed {
    pub(super) seq: u32,
    pub(super) pos: u32,
    _never: Infallible,
}

impl Session<'_> {
    pub(super) fn feed(&mut self, _: u32, _: u32, _: bool) -> Result<Option<Feed>, ModelError> {
        match self.0 {}
    }

    pub(super) fn decode<'f>(
        &mut self,
        _: impl Iterator<Item = &'f Feed>,
    ) -> Result<(), ModelError> {
        match self.0 {}
    }

    pub(super) fn logits(&self, _: usize) -> &[f32] {
        match self.0 {}
    }

    pub(super) fn clear(&mut self, _: u32) -> Result<(), ModelError> {
        match self.0 {}
    }
}

/// There are no llama.cpp threads to release.
pub fn release_threads() {}
