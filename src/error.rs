//! The crate's error type: every way compressing or decoding can fail, with context.

use crate::format::FormatError;
use crate::model::{Fingerprint, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("blob was made with {blob}, but the loaded model gives {ours}: decode it with the same model file and build (see `nacrithfs info`)")]
    FingerprintMismatch {
        blob: Fingerprint,
        ours: Fingerprint,
    },
    #[error("text chunk {chunk} decodes to data that fails its checksum: the blob is corrupt or was made by another model/build")]
    ChunkChecksum { chunk: usize },
    #[error("binary frame {frame} is corrupt: {why}")]
    Frame { frame: usize, why: String },
    #[error("decoded file fails its checksum: the blob is corrupt")]
    FileChecksum,
    #[error(
        "verification failed: chunk {chunk} did not decode back to its input (no blob written)"
    )]
    VerifyFailed { chunk: usize },
    #[error("corrupt stream: {0}")]
    Corrupt(String),
    #[error("inference engine: {0}")]
    Engine(String),
}

impl Error {
    /// The errno a filesystem should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Model(ModelError::Context { .. }) => libc::ENOMEM,
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
