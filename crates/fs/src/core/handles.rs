//! Open handles: the file handles of open files and directories, and of the status
//! file, by the number the kernel holds.

use super::lock;
use super::types::{DirEntry, Ino};
use crate::error::{FsError, FsResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What a handle is open on.
pub(super) enum Handle {
    /// A regular file, for reading or also for writing.
    File { ino: Ino, write: bool },
    /// A directory, listed when it was opened.
    Dir { entries: Vec<DirEntry> },
    /// The status file, its content generated when it was opened.
    Status { data: Vec<u8> },
}

/// Every open handle.
#[derive(Default)]
pub(super) struct Handles {
    map: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    /// Registers `h` and returns its number (never 0).
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.map).insert(fh, h);
        fh
    }

    /// Closes handle `fh`, giving back what it was open on.
    pub fn remove(&self, fh: u64) -> Option<Handle> {
        lock(&self.map).remove(&fh)
    }

    /// The inode of file handle `fh`; EBADF if there is none, or (with `need_write`) if
    /// it was not opened for writing.
    pub fn file(&self, fh: u64, need_write: bool) -> FsResult<Ino> {
        match lock(&self.map).get(&fh) {
            Some(Handle::File { ino, write }) if *write || !need_write => Ok(*ino),
            Some(Handle::File { .. }) => Err(FsError::refused(
                libc::EBADF,
                format!("handle {fh} is not open for writing"),
            )),
            _ => Err(FsError::refused(
                libc::EBADF,
                format!("no open file with handle {fh}"),
            )),
        }
    }

    /// Runs `f` on handle `fh`.
    pub fn with<T>(&self, fh: u64, f: impl FnOnce(Option<&Handle>) -> T) -> T {
        f(lock(&self.map).get(&fh))
    }
}
