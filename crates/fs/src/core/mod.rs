//! The filesystem core: inodes, handles, namespace operations, reads and writes over
//! the backing directory, and committing compressed blobs. Knows nothing of FUSE and
//! nothing of the model: every operation returns a `Result` with an errno, and the
//! codec is a trait object.
//!
//! One concept a file, in the manner of mountpoint-s3's superblock, inode and handle
//! modules: [`inode`] (the table and its transitions), [`handles`], [`content`] (what
//! open handles share), [`blob_cache`] (headers, decoded extents, claims, read-ahead), the
//! operations ([`namespace`], [`file`], [`attr`], [`xattr`]) and [`compress`] (the
//! compressor loop that the daemon and the tests both run).
//!
//! Backing access: every syscall goes through a directory descriptor ([`Dir`]) and one
//! plain name, never a path the kernel walks again ([`Core::entry`], [`Core::dir_of`]).
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
mod overlay;
mod status;
mod types;
mod xattr;

pub use status::{human_secs, JobStatus, Status};
pub use types::{
    Allocate, Attr, DirEntry, Ino, Kind, OpenReply, SetAttr, SetTime, Statfs, ROOT_INO, STATUS_INO,
    STATUS_NAME,
};

use crate::error::{FsResult, IoContext};
use crate::store::{Backing, Codec, Dir, Stat, WorkQueue};
use blob_cache::BlobCache;
use handles::Handles;
use inode::{noent, Table};
use status::Counters;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Settings of the core.
pub struct CoreConfig {
    /// Bound of the decoded-extent cache, in bytes.
    pub cache_bytes: usize,
    /// Pieces that need the model (text chunks) decoded ahead of a reader that reads
    /// a file in order, in the background; 0 for none.
    pub read_ahead: usize,
    /// Larger files are kept as plaintext (a choice of the user: the compressor
    /// holds a window of a file, never all of it, whatever its size).
    pub max_compress_bytes: u64,
    /// How long a changed file is left alone before it is compressed: another change
    /// meanwhile moves the time on (see [`WorkQueue::push_settled`]).
    ///
    /// [`WorkQueue::push_settled`]: crate::store::WorkQueue::push_settled
    pub settle: Duration,
}

/// Default of [`CoreConfig::settle`]: long enough for the next line of a log, or the
/// next write of a program that closes and opens its file again, to come first.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// Default of [`CoreConfig::read_ahead`]: as many chunks as one lockstep batch of the
/// engine's default holds (`DEFAULT_STREAMS`).
pub const DEFAULT_READ_AHEAD: usize = 16;

/// Default of [`CoreConfig::max_compress_bytes`]: no limit.
pub const DEFAULT_MAX_COMPRESS_BYTES: u64 = u64::MAX;

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            cache_bytes: 64 << 20,
            read_ahead: DEFAULT_READ_AHEAD,
            max_compress_bytes: DEFAULT_MAX_COMPRESS_BYTES,
            settle: DEFAULT_SETTLE,
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
    /// The compressions in progress, for `status`.
    active: Mutex<std::collections::HashMap<Ino, compress::ActiveJob>>,
    started: SystemTime,
    max_compress_bytes: u64,
    settle: Duration,
}

/// Locks `m`, also after a panic elsewhere (the state it guards stays consistent:
/// every change under these locks is a few assignments).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a node's backing entry is: its parent directory, held by descriptor, and its
/// name there (for the root: the root itself and `.`).
pub(super) struct Entry {
    pub dir: Dir,
    pub name: OsString,
}

impl Entry {
    /// The entry's stat (a symlink itself, not followed).
    pub fn stat(&self) -> FsResult<Stat> {
        self.dir.stat(&self.name)
    }

    /// `BACKING/…/name`, for messages.
    pub fn show(&self) -> String {
        self.dir.show(&self.name)
    }
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
        let root = Stat::of_fd(backing.root_dir().fd()).ctx(backing.root().display())?;
        Ok(Core {
            backing,
            codec,
            table: Mutex::new(Table::new(root.id())),
            handles: Handles::default(),
            queue: WorkQueue::default(),
            blobs: BlobCache::new(config.cache_bytes, config.read_ahead),
            counters: Counters::default(),
            active: Mutex::new(Default::default()),
            started: SystemTime::now(),
            max_compress_bytes: config.max_compress_bytes,
            settle: config.settle,
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
            let st = self.dir_of(&t, ino)?.stat(comp)?;
            ino = t.node_for(ino, comp, &st);
        }
        Ok(ino)
    }

    /// The directory node `ino`, opened beneath the backing root without following a
    /// symlink.
    fn dir_of(&self, t: &Table, ino: Ino) -> FsResult<Dir> {
        self.backing.dir(&t.rel_path(ino)?)
    }

    /// Where node `ino`'s backing entry is: its parent's directory and its first name.
    fn entry(&self, t: &Table, ino: Ino) -> FsResult<Entry> {
        if ino == ROOT_INO {
            return Ok(Entry {
                dir: self.backing.dir(Path::new(""))?,
                name: OsString::from("."),
            });
        }
        let (parent, name) = t.node(ino)?.links.first().ok_or_else(noent)?;
        Ok(Entry {
            dir: self.dir_of(t, *parent)?,
            name: name.clone(),
        })
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
