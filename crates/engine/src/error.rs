//! Every way compressing or decoding can fail. Leaf errors (the container's, the
//! model's, a frame's) are kept as sources, never flattened into strings.

use crate::model::ModelError;
use nc06::format::{FormatError, FrameError};
use nc06::Fingerprint;
use std::sync::Arc;

/// An error of the engine: of a blob, of the model, or of the workers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The model or llama.cpp failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The blob's text was coded by another model or inference build.
    #[error("blob was made with {blob}, but the loaded model gives {ours}: {} (see `nacrithfs info`)", crate::model::mismatch_hint(.blob, .ours))]
    FingerprintMismatch {
        /// What the blob records.
        blob: Fingerprint,
        /// What this model and build give.
        ours: Fingerprint,
    },
    /// A text chunk decoded to bytes that fail its CRC-32C.
    #[error("text chunk {chunk} decodes to data that fails its checksum: the blob is corrupt or was made by another model/build")]
    ChunkChecksum {
        /// The chunk's index in the chunk table.
        chunk: usize,
    },
    /// A binary frame does not decode to what its table entry says.
    #[error("binary frame {frame} is corrupt")]
    Frame {
        /// The frame's index in the frame table.
        frame: usize,
        /// Why.
        #[source]
        source: FrameError,
    },
    /// The blob's payload could not be read (from its file).
    #[error("cannot read the blob's payload")]
    Payload(#[source] std::io::Error),
    /// The whole file decoded to bytes that fail the header's CRC-32C.
    #[error("decoded file fails its checksum: the blob is corrupt")]
    FileChecksum,
    /// A chunk did not decode back to its input while compressing (no blob is made).
    #[error(
        "verification failed: chunk {chunk} did not decode back to its input (no blob written)"
    )]
    VerifyFailed {
        /// The chunk's index in the file's chunk table.
        chunk: usize,
    },
    /// A binary frame did not decompress back to its input while compressing.
    #[error("verification failed: binary frame {frame} did not decompress back to its input (no blob written)")]
    VerifyFailedFrame {
        /// The frame's index in the file's frame table.
        frame: usize,
    },
    /// A token to encode is outside the model's vocabulary.
    #[error("token {token} is outside the model's vocabulary of {vocab}")]
    TokenOutOfVocabulary {
        /// The token.
        token: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// A serialised blob did not parse back to the blob it was made from.
    #[error("the container did not read back as written (no blob written)")]
    ContainerRoundTrip,
    /// The input has no text for the model (`bench-engine`).
    #[error("the input has no text to tokenize")]
    NoText,
    /// A model worker thread could not be started.
    #[error("cannot start a model worker")]
    WorkerSpawn(#[source] std::io::Error),
    /// The engine's workers are gone (shut down, or stopped by a failure).
    #[error("the model workers have stopped")]
    Stopped,
    /// Another chunk of the same request failed first; this one was dropped.
    #[error("cancelled: another chunk of the same request failed")]
    Cancelled,
    /// An error shared by several requests (every stream of a failed model call, or
    /// every caller of a pool that failed to start).
    #[error("{0}")]
    Shared(#[source] Arc<Error>),
    /// A thread of the engine panicked.
    #[error("the {0} panicked")]
    Panicked(&'static str),
    /// Something the engine's own invariants rule out.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The errno a filesystem should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Model(e) if e.out_of_memory() => libc::ENOMEM,
            Error::Shared(e) => e.errno(),
            _ => libc::EIO,
        }
    }
}

/// The engine's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
