//! The filesystem core: inodes, handles, namespace operations, reads and writes over
//! the backing directory, and committing compressed blobs. Knows nothing of FUSE and
//! nothing of the model: every operation returns a `Result` with an errno, and the
//! codec is a trait object.
//!
//! One concept a file, in the manner of mountpoint-s3's superblock, inode and handle
//! modules: [`inode`] (the table and its transitions), [`handles`], [`content`] (what
//! open handles share), [`blob_cache`] (headers, decoded extents, decode gates), the
//! operations ([`namespace`], [`file`], [`attr`], [`xattr`]) and [`compress`] (the
//! compressor loop that the daemon and the tests both run).
//!
//! Concurrency: one table lock guards the namespace and node state; every namespace
//! change and every content replacement happens under it. Slow work (decoding,
//! compressing, plaintext reads and writes) runs outside it. A compression commits only
//! if the node's generation (bumped by every modification) is unchanged and no handle
//! can write; modifications without a handle (truncate by path) run under the lock.

mod attr;
mod blob_cache;
mod compress;
mod content;
mod file;
mod handles;
mod inode;
mod namespace;
mod status;
mod types;
mod xattr;

pub use status::Status;
pub use types::{
    Attr, DirEntry, Ino, Kind, OpenReply, SetAttr, SetTime, Statfs, ROOT_INO, STATUS_INO,
    STATUS_NAME,
};

use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::BPath;
use crate::store::{Backing, Codec, WorkQueue};
use blob_cache::BlobCache;
use handles::Handles;
use inode::{backing_id, Table};
use status::Counters;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// Settings of the core.
pub struct CoreConfig {
    /// Bound of the decoded-extent cache, in bytes.
    pub cache_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            cache_bytes: 64 << 20,
        }
    }
}

/// The filesystem over one backing directory.
pub struct Core {
    backing: Backing,
    codec: Arc<dyn Codec>,
    table: Mutex<Table>,
    handles: Handles,
    queue: WorkQueue,
    blobs: BlobCache,
    counters: Counters,
    started: SystemTime,
}

/// Locks `m`, also after a panic elsewhere (the state it guards stays consistent:
/// every change under these locks is a few assignments).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `p` as a C string (EINVAL if it holds a NUL).
fn cpath(p: &Path) -> FsResult<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| FsError::refused(libc::EINVAL, format!("{}: path contains NUL", p.display())))
}

/// Reads from `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Core {
    /// A core over `backing`; call [`Core::recover`] before serving requests.
    pub fn new(backing: Backing, codec: Arc<dyn Codec>, config: CoreConfig) -> FsResult<Core> {
        let md = std::fs::symlink_metadata(backing.root()).ctx(backing.root().display())?;
        Ok(Core {
            backing,
            codec,
            table: Mutex::new(Table::new(backing_id(&md))),
            handles: Handles::default(),
            queue: WorkQueue::default(),
            blobs: BlobCache::new(config.cache_bytes),
            counters: Counters::default(),
            started: SystemTime::now(),
        })
    }

    /// The backing directory.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The inode table, locked.
    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Start-up recovery: deletes temporary files of interrupted writes and queues
    /// every plaintext file (written before a crash or put into BACKING directly).
    /// Returns (temporary files deleted, files queued).
    pub fn recover(&self) -> FsResult<(usize, usize)> {
        let cleaned = self
            .backing
            .clean_tmp()
            .map_err(|e| e.in_file("cleaning .nacrithfs/tmp"))?;
        let files = self
            .backing
            .plaintext_files()
            .map_err(|e| e.in_file("scanning for plaintext files"))?;
        let mut queued = 0;
        for rel in files {
            match self.resolve(&rel) {
                Ok(ino) => {
                    self.table().mark_dirty(ino);
                    self.queue.push(ino);
                    queued += 1;
                }
                Err(e) => log::warn!("recovery: {}: {}", rel.display(), e.report()),
            }
        }
        self.publish();
        Ok((cleaned, queued))
    }

    /// Finds (creating nodes as needed, without lookup counts) the node of a relative path.
    fn resolve(&self, rel: &Path) -> FsResult<Ino> {
        let mut ino = ROOT_INO;
        for comp in rel.iter() {
            let mut t = self.table();
            let path = self.path_of(&t, ino)?.join(comp);
            let md = std::fs::symlink_metadata(&path).ctx(path.display())?;
            ino = t.node_for(ino, comp, &md);
        }
        Ok(ino)
    }

    /// The backing path of a node, for syscalls.
    fn path_of(&self, t: &Table, ino: Ino) -> FsResult<BPath> {
        self.backing.sys_path(&t.rel_path(ino)?)
    }

    /// The backing path of a node, for messages.
    fn describe(&self, ino: Ino) -> String {
        self.describe_locked(&self.table(), ino)
    }

    /// [`Core::describe`] with the table already locked.
    fn describe_locked(&self, t: &Table, ino: Ino) -> String {
        match t.rel_path(ino) {
            Ok(rel) => self.backing.path(&rel).display().to_string(),
            Err(_) => format!("inode {ino} (unlinked)"),
        }
    }
}
