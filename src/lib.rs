//! nacrithfs: neural lossless compression (the Nacrith method: SmolLM2 through
//! llama.cpp, 24-bit CDFs, a 32-bit arithmetic coder) in the NC06 container, and a FUSE
//! filesystem that stores every file that way.

pub mod bench;
pub mod cli;
pub mod codec;
pub mod engine;
mod error;
pub mod format;
pub mod fs;
pub mod model;
pub mod pack;
pub mod store;

pub use error::{Error, Result};

/// Default text chunk size in bytes; see docs/BENCHMARKS.md for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: usize = 16 * 1024;
/// Default number of streams decoded together per llama.cpp call.
pub const DEFAULT_STREAMS: u32 = 16;
