//! Errors of the filesystem core, each with the errno the kernel gets.

use crate::store::CodecError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A backing-directory syscall failed.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// A refusal decided by the filesystem itself.
    #[error("{what}")]
    Errno { what: &'static str, errno: i32 },
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io { source, .. } => {
                crate::store::backing::os_errno(source).unwrap_or(libc::EIO)
            }
            FsError::Errno { errno, .. } => *errno,
            FsError::Codec(e) => e.errno,
        }
    }

    pub fn noent() -> Self {
        FsError::Errno {
            what: "no such inode or entry",
            errno: libc::ENOENT,
        }
    }

    pub fn new(what: &'static str, errno: i32) -> Self {
        FsError::Errno { what, errno }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Adds context to an io::Error: `.map_err(io_ctx(&path))`.
pub fn io_ctx<D: std::fmt::Debug + ?Sized>(what: &D) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        context: format!("{what:?}"),
        source,
    }
}
