//! The filesystem core: inodes, handles, namespace operations, reads and writes over
//! the backing directory, and committing compressed blobs. Knows nothing of FUSE.
//!
//! Inode identity: a node is found by its backing file's `(dev, ino)`, so every hard
//! link of a file is the same node; each node records its links as `(parent, name)`
//! pairs, and paths are rebuilt by walking parents, so renaming a directory moves its
//! whole subtree at once. Our inode numbers are our own and stay fixed when a file's
//! content is replaced (compression and decompression rename a new backing inode over
//! the old one; the node's `(dev, ino)` is updated under the table lock).
//!
//! Content: a node that is open holds its content, `Plain` (an fd on the backing
//! plaintext) or `Blob` (the parsed blob plus an fd on it). All handles of a node share
//! it, and it survives unlink, so an unlinked open file stays readable and writable.
//!
//! Concurrency: one table lock guards the namespace and node state; every namespace
//! change and every content replacement happens under it. Slow work (decoding,
//! compressing, plaintext reads and writes) runs outside it. A compression commits only
//! if the node's generation (bumped by every modification) is unchanged and no handle
//! can write; modifications without a handle (truncate by path) run under the lock.

use super::error::{io_ctx, FsError, FsResult};
use crate::store::backing::{self, cvt, BPath, Backing, INTERNAL_DIR, RESERVED_XATTR_PREFIX};
use crate::store::{Codec, CodecError, OpenBlob, WorkQueue};
use lru::LruCache;
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;
/// The hidden, read-only status file at the mount root (not listed by readdir).
pub const STATUS_INO: Ino = 2;
pub const STATUS_NAME: &str = ".nacrithfs-status";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl Kind {
    fn of(md: &Metadata) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_char_device() {
            Kind::Char
        } else if t.is_block_device() {
            Kind::Block
        } else {
            Kind::File
        }
    }
}

/// File attributes as the mount shows them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// How the kernel should treat an open file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenReply {
    /// Keep the page cache (compressed files: repeat reads never decode again).
    pub keep_cache: bool,
    /// Bypass the page cache (the status file, whose size is unknown).
    pub direct_io: bool,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: OsString,
}

#[derive(Clone, Debug, Default)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Counters published by `nacrithfs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub queued: u64,
    pub compressing: u64,
    /// Modified files still open for writing (queued at their last close).
    pub writing: u64,
    pub compressed: u64,
    pub failed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Status {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"queued\":{},\"compressing\":{},\"writing\":{},\"compressed\":{},\"failed\":{},\"bytes_before\":{},\"bytes_after\":{}}}\n",
            self.queued, self.compressing, self.writing, self.compressed, self.failed, self.bytes_before, self.bytes_after
        )
    }

    /// Parses [`Status::to_json`]'s output (missing fields read as 0).
    pub fn from_json(s: &str) -> Option<Status> {
        let field = |k: &str| -> Option<u64> {
            let at = s.find(&format!("\"{k}\":"))? + k.len() + 3;
            s[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .ok()
        };
        s.trim_start().starts_with('{').then_some(())?;
        Some(Status {
            queued: field("queued")?,
            compressing: field("compressing")?,
            writing: field("writing").unwrap_or(0),
            compressed: field("compressed").unwrap_or(0),
            failed: field("failed").unwrap_or(0),
            bytes_before: field("bytes_before").unwrap_or(0),
            bytes_after: field("bytes_after").unwrap_or(0),
        })
    }

    /// Nothing left for the workers to do.
    pub fn idle(&self) -> bool {
        self.queued == 0 && self.compressing == 0 && self.writing == 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queued {}, compressing {}, open for writing {}, compressed {} ({} -> {} bytes{}), failed {}",
            self.queued,
            self.compressing,
            self.writing,
            self.compressed,
            self.bytes_before,
            self.bytes_after,
            if self.bytes_before > 0 { format!(", ratio {:.3}", self.bytes_after as f64 / self.bytes_before as f64) } else { String::new() },
            self.failed
        )
    }
}

type BackingId = (u64, u64);
/// Identifies an immutable blob file: (dev, ino, ctime). A replaced or rewritten file
/// gets a new key, so cached headers and extents never go stale.
type BlobKey = (u64, u64, i64, i64);

fn blob_key(md: &Metadata) -> BlobKey {
    (md.dev(), md.ino(), md.ctime(), md.ctime_nsec())
}

#[derive(Clone)]
enum Content {
    Plain(Arc<File>),
    Blob {
        blob: Arc<dyn OpenBlob>,
        key: BlobKey,
        file: Arc<File>,
    },
}

impl Content {
    fn file(&self) -> &Arc<File> {
        match self {
            Content::Plain(f) => f,
            Content::Blob { file, .. } => file,
        }
    }
}

struct Node {
    kind: Kind,
    /// `(parent, name)` of every known link; empty once unlinked.
    links: Vec<(Ino, OsString)>,
    id: BackingId,
    lookups: u64,
    opens: u32,
    writers: u32,
    /// Bumped by every modification; a compression commits only if it is unchanged.
    gen: u64,
    /// Modified since it was last compressed.
    dirty: bool,
    content: Option<Content>,
}

struct Table {
    nodes: HashMap<Ino, Node>,
    by_id: HashMap<BackingId, Ino>,
    next: Ino,
}

enum Handle {
    File { ino: Ino, write: bool },
    Dir { entries: Vec<DirEntry> },
    Status { data: Vec<u8> },
}

/// Decoded extents of blobs, bounded in bytes.
struct ExtentCache {
    lru: LruCache<(BlobKey, usize), Arc<Vec<u8>>>,
    bytes: usize,
    cap: usize,
}

impl ExtentCache {
    fn insert(&mut self, k: (BlobKey, usize), v: Arc<Vec<u8>>) {
        self.bytes += v.len();
        if let Some(old) = self.lru.put(k, v) {
            self.bytes -= old.len();
        }
        while self.bytes > self.cap {
            match self.lru.pop_lru() {
                Some((_, v)) => self.bytes -= v.len(),
                None => break,
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    compressed: AtomicU64,
    failed: AtomicU64,
    bytes_before: AtomicU64,
    bytes_after: AtomicU64,
}

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

pub struct Core {
    backing: Backing,
    codec: Arc<dyn Codec>,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    queue: WorkQueue,
    cache: Mutex<ExtentCache>,
    headers: Mutex<HashMap<BlobKey, u64>>,
    /// One decoder per blob at a time, so concurrent readers of the same chunks wait
    /// for one decode instead of each running the model.
    decoding: Mutex<HashMap<BlobKey, Arc<Mutex<()>>>>,
    counters: Counters,
    started: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn cpath(p: &Path) -> FsResult<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| FsError::new("path contains NUL", libc::EINVAL))
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: ns,
                }
            }
        },
    }
}

/// Where a node's metadata is: its backing path, or (unlinked) its open file.
enum Target {
    Path(BPath),
    Orphan(Arc<File>),
}

impl Core {
    /// A core over `backing`; call [`Core::recover`] before serving requests.
    pub fn new(backing: Backing, codec: Arc<dyn Codec>, config: CoreConfig) -> FsResult<Core> {
        let md = std::fs::symlink_metadata(backing.root()).map_err(io_ctx(backing.root()))?;
        let mut nodes = HashMap::new();
        let id = (md.dev(), md.ino());
        nodes.insert(
            ROOT_INO,
            Node {
                kind: Kind::Dir,
                links: Vec::new(),
                id,
                lookups: 1,
                opens: 0,
                writers: 0,
                gen: 0,
                dirty: false,
                content: None,
            },
        );
        let cache = ExtentCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            cap: config.cache_bytes,
        };
        Ok(Core {
            backing,
            codec,
            table: Mutex::new(Table {
                nodes,
                by_id: HashMap::from([(id, ROOT_INO)]),
                next: STATUS_INO + 1,
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            queue: WorkQueue::default(),
            cache: Mutex::new(cache),
            headers: Mutex::new(HashMap::new()),
            decoding: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            started: SystemTime::now(),
        })
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Start-up recovery: deletes temporary files of interrupted writes and queues
    /// every plaintext file (written before a crash or put into BACKING directly).
    /// Returns (temporary files deleted, files queued).
    pub fn recover(&self) -> FsResult<(usize, usize)> {
        let cleaned = self
            .backing
            .clean_tmp()
            .map_err(io_ctx("cleaning .nacrithfs/tmp"))?;
        let files = self
            .backing
            .plaintext_files()
            .map_err(io_ctx("scanning for plaintext files"))?;
        let mut queued = 0;
        for rel in files {
            match self.resolve(&rel) {
                Ok(ino) => {
                    let mut t = lock(&self.table);
                    if let Some(n) = t.nodes.get_mut(&ino) {
                        n.dirty = true;
                    }
                    drop(t);
                    self.queue.push(ino);
                    queued += 1;
                }
                Err(e) => log::warn!("recovery: {}: {e}", rel.display()),
            }
        }
        self.publish();
        Ok((cleaned, queued))
    }

    /// Finds (creating nodes as needed, without lookup counts) the node of a relative path.
    fn resolve(&self, rel: &Path) -> FsResult<Ino> {
        let mut ino = ROOT_INO;
        for comp in rel.iter() {
            let mut t = lock(&self.table);
            let path = self.path_of(&t, ino)?.join(comp);
            let md = std::fs::symlink_metadata(&path).map_err(io_ctx(&path))?;
            ino = Self::node_for(&mut t, ino, comp, &md);
        }
        Ok(ino)
    }

    // ----- the inode table -----

    fn node_for(t: &mut Table, parent: Ino, name: &OsStr, md: &Metadata) -> Ino {
        let id = (md.dev(), md.ino());
        if let Some(&ino) = t.by_id.get(&id) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                if !n.links.iter().any(|(p, nm)| *p == parent && nm == name) {
                    n.links.push((parent, name.to_owned()));
                }
                n.kind = Kind::of(md);
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(
            ino,
            Node {
                kind: Kind::of(md),
                links: vec![(parent, name.to_owned())],
                id,
                lookups: 0,
                opens: 0,
                writers: 0,
                gen: 0,
                dirty: false,
                content: None,
            },
        );
        t.by_id.insert(id, ino);
        ino
    }

    fn rel_path(t: &Table, ino: Ino) -> FsResult<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = t.nodes.get(&cur).ok_or_else(FsError::noent)?;
            let (p, name) = n.links.first().ok_or_else(FsError::noent)?;
            parts.push(name.as_os_str());
            cur = *p;
            if parts.len() > 4096 {
                return Err(FsError::new("path too deep or cyclic", libc::ELOOP));
            }
        }
        Ok(parts.iter().rev().collect())
    }

    fn path_of(&self, t: &Table, ino: Ino) -> FsResult<BPath> {
        let rel = Self::rel_path(t, ino)?;
        self.backing.sys_path(&rel).map_err(io_ctx(&rel))
    }

    fn target(&self, t: &Table, ino: Ino) -> FsResult<Target> {
        let n = t.nodes.get(&ino).ok_or_else(FsError::noent)?;
        if ino != ROOT_INO && n.links.is_empty() {
            return match &n.content {
                Some(c) => Ok(Target::Orphan(c.file().clone())),
                None => Err(Self::stale()),
            };
        }
        Ok(Target::Path(self.path_of(t, ino)?))
    }

    /// For a node the kernel still knows but whose file is gone (unlinked, or replaced by
    /// a rename, while nothing held it open): ESTALE makes the kernel look the path up
    /// again, so an open racing with a rename over the file opens the new file instead
    /// of failing with ENOENT (found by tests/load.rs).
    fn stale() -> FsError {
        FsError::new(
            "file replaced or removed since it was looked up",
            libc::ESTALE,
        )
    }

    /// Drops a node nobody can reach any more.
    fn maybe_remove(t: &mut Table, ino: Ino) {
        let gone = t
            .nodes
            .get(&ino)
            .is_some_and(|n| n.links.is_empty() && n.opens == 0 && n.lookups == 0);
        if gone && ino != ROOT_INO {
            if let Some(n) = t.nodes.remove(&ino) {
                if t.by_id.get(&n.id) == Some(&ino) {
                    t.by_id.remove(&n.id);
                }
            }
        }
    }

    /// Removes link `(parent, name)` of the node with backing id `id`; `nlink` is the
    /// backing link count before the removal.
    fn drop_link(t: &mut Table, id: BackingId, parent: Ino, name: &OsStr, nlink: u64) {
        let Some(&ino) = t.by_id.get(&id) else { return };
        let Some(n) = t.nodes.get_mut(&ino) else {
            return;
        };
        n.links.retain(|(p, nm)| !(*p == parent && nm == name));
        if nlink <= 1 {
            n.links.clear();
        }
        if n.links.is_empty() {
            // Unreachable by any name we know: an orphan, alive while open.
            t.by_id.remove(&id);
            Self::maybe_remove(t, ino);
        }
    }

    fn is_reserved(parent: Ino, name: &OsStr) -> bool {
        parent == ROOT_INO && (name == INTERNAL_DIR || name == STATUS_NAME)
    }

    /// One path component as the kernel sends it: never empty, `.`, `..` or with a `/`.
    /// Checked anyway, so no request can make a backing path leave its parent.
    fn check_name(name: &OsStr) -> FsResult<()> {
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
            return Err(FsError::new("not a plain file name", libc::EINVAL));
        }
        Ok(())
    }

    fn check_new_name(parent: Ino, name: &OsStr) -> FsResult<()> {
        Self::check_name(name)?;
        if Self::is_reserved(parent, name) {
            return Err(FsError::new("name reserved by nacrithfs", libc::EPERM));
        }
        if name.len() > 255 {
            return Err(FsError::new("name too long", libc::ENAMETOOLONG));
        }
        Ok(())
    }

    // ----- attributes -----

    fn status_attr(&self) -> Attr {
        Attr {
            ino: STATUS_INO,
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            kind: Kind::File,
            perm: 0o444,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }

    /// The backing path of a node, for log lines.
    fn describe(&self, ino: Ino) -> String {
        let t = lock(&self.table);
        match Self::rel_path(&t, ino) {
            Ok(rel) => self.backing.path(&rel).display().to_string(),
            Err(_) => format!("inode {ino} (unlinked)"),
        }
    }

    /// Names the file in a codec failure, so the log line says which blob is damaged.
    fn name_codec_err(&self, ino: Ino, e: FsError) -> FsError {
        match e {
            FsError::Codec(c) => named(self.describe(ino))(c),
            e => e,
        }
    }

    /// The original length of the blob `f` (cached by [`BlobKey`]).
    fn blob_len(&self, f: &File, md: &Metadata, name: &Path) -> FsResult<u64> {
        let key = blob_key(md);
        if let Some(&len) = lock(&self.headers).get(&key) {
            return Ok(len);
        }
        let mut want = 4096usize;
        let len = loop {
            let mut buf = vec![0u8; want];
            let n = read_full_at(f, &mut buf, 0).map_err(io_ctx("reading blob header"))?;
            buf.truncate(n);
            match self
                .codec
                .original_len(&buf)
                .map_err(named(name.display()))?
            {
                Some(len) => break len,
                None if n < want => {
                    return Err(named(name.display())(CodecError::eio(
                        "blob header truncated",
                    )))
                }
                None => want *= 4,
            }
        };
        lock(&self.headers).insert(key, len);
        Ok(len)
    }

    fn attr_of(&self, ino: Ino, target: &Target) -> FsResult<Attr> {
        let (md, file) = match target {
            Target::Path(p) => (std::fs::symlink_metadata(p).map_err(io_ctx(p))?, None),
            Target::Orphan(f) => (f.metadata().map_err(io_ctx("fstat"))?, Some(f.clone())),
        };
        let mut size = md.len();
        if md.is_file() {
            let f = match (file, target) {
                (Some(f), _) => f,
                (None, Target::Path(p)) => {
                    if !backing::is_blob_path(p).map_err(io_ctx(p))? {
                        return Ok(Self::attr_from(ino, &md, size));
                    }
                    Arc::new(File::open(p).map_err(io_ctx(p))?)
                }
                (None, Target::Orphan(f)) => f.clone(),
            };
            if backing::is_blob_file(&f).map_err(io_ctx("fgetxattr"))? {
                let name = match target {
                    Target::Path(p) => p.to_path_buf(),
                    Target::Orphan(_) => PathBuf::from("(unlinked file)"),
                };
                // A blob whose header is unreadable keeps its stored size, so it can
                // still be looked up, renamed, replaced and removed; reads of it fail.
                match self.blob_len(&f, &md, &name) {
                    Ok(len) => size = len,
                    Err(e) => log::warn!("{e}"),
                }
            }
        }
        Ok(Self::attr_from(ino, &md, size))
    }

    fn attr_from(ino: Ino, md: &Metadata, size: u64) -> Attr {
        Attr {
            ino,
            size,
            blocks: md.blocks(),
            atime: to_time(md.atime(), md.atime_nsec()),
            mtime: to_time(md.mtime(), md.mtime_nsec()),
            ctime: to_time(md.ctime(), md.ctime_nsec()),
            kind: Kind::of(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
        }
    }

    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if ino == STATUS_INO {
            return Ok(self.status_attr());
        }
        let target = self.target(&lock(&self.table), ino)?;
        self.attr_of(ino, &target)
    }

    // ----- namespace -----

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        if parent == ROOT_INO && name == STATUS_NAME {
            return Ok(self.status_attr());
        }
        if Self::is_reserved(parent, name) {
            return Err(FsError::noent());
        }
        Self::check_name(name)?;
        let (ino, path) = {
            let mut t = lock(&self.table);
            let path = self.path_of(&t, parent)?.join(name);
            let md = std::fs::symlink_metadata(&path).map_err(io_ctx(&path))?;
            let ino = Self::node_for(&mut t, parent, name, &md);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            (ino, path)
        };
        self.attr_of(ino, &Target::Path(path))
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO || ino == STATUS_INO {
            return;
        }
        let mut t = lock(&self.table);
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        Self::maybe_remove(&mut t, ino);
    }

    /// Registers a just-created entry and counts the kernel's lookup.
    fn created(
        &self,
        parent: Ino,
        name: &OsStr,
        path: &BPath,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        chown_quiet(path, uid, gid)?;
        let ino = {
            let mut t = lock(&self.table);
            let md = std::fs::symlink_metadata(path).map_err(io_ctx(path))?;
            let ino = Self::node_for(&mut t, parent, name, &md);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            ino
        };
        self.attr_of(ino, &Target::Path(path.clone()))
    }

    pub fn mkdir(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        Self::check_new_name(parent, name)?;
        let path = self.path_of(&lock(&self.table), parent)?.join(name);
        std::fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&path)
            .map_err(io_ctx(&path))?;
        self.created(parent, name, &path, uid, gid)
    }

    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        Self::check_new_name(parent, name)?;
        let path = self.path_of(&lock(&self.table), parent)?.join(name);
        let c = cpath(&path)?;
        cvt(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
            .map_err(io_ctx(&path))?;
        self.created(parent, name, &path, uid, gid)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        Self::check_new_name(parent, name)?;
        let path = self.path_of(&lock(&self.table), parent)?.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(io_ctx(&path))?;
        self.created(parent, name, &path, uid, gid)
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let path = self.path_of(&lock(&self.table), ino)?;
        Ok(std::fs::read_link(&path)
            .map_err(io_ctx(&path))?
            .into_os_string()
            .into_encoded_bytes())
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> FsResult<Attr> {
        Self::check_new_name(newparent, newname)?;
        let dst = {
            let mut t = lock(&self.table);
            let src = self.path_of(&t, ino)?;
            let dst = self.path_of(&t, newparent)?.join(newname);
            std::fs::hard_link(&src, &dst).map_err(io_ctx(&dst))?;
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.links.push((newparent, newname.to_owned()));
                n.lookups += 1;
            }
            dst
        };
        self.attr_of(ino, &Target::Path(dst))
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> FsResult<()> {
        if Self::is_reserved(parent, name) {
            return Err(FsError::new("name reserved by nacrithfs", libc::EPERM));
        }
        Self::check_name(name)?;
        let mut t = lock(&self.table);
        let path = self.path_of(&t, parent)?.join(name);
        let md = std::fs::symlink_metadata(&path).map_err(io_ctx(&path))?;
        if dir {
            std::fs::remove_dir(&path).map_err(io_ctx(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_ctx(&path))?;
        }
        Self::drop_link(&mut t, (md.dev(), md.ino()), parent, name, md.nlink());
        Ok(())
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if Self::is_reserved(parent, name) || Self::is_reserved(newparent, newname) {
            return Err(FsError::new("name reserved by nacrithfs", libc::EPERM));
        }
        Self::check_name(name)?;
        Self::check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 {
            return Err(FsError::new("unsupported rename flags", libc::EINVAL));
        }
        let mut t = lock(&self.table);
        let src = self.path_of(&t, parent)?.join(name);
        let dst = self.path_of(&t, newparent)?.join(newname);
        let smd = std::fs::symlink_metadata(&src).map_err(io_ctx(&src))?;
        let dmd = std::fs::symlink_metadata(&dst).ok();
        let (cs, cd) = (cpath(&src)?, cpath(&dst)?);
        cvt(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cs.as_ptr(),
                libc::AT_FDCWD,
                cd.as_ptr(),
                flags,
            )
        })
        .map_err(io_ctx(&format!(
            "rename {} -> {}",
            src.display(),
            dst.display()
        )))?;
        let sid = (smd.dev(), smd.ino());
        let did = dmd.as_ref().map(|m| (m.dev(), m.ino()));
        if did == Some(sid) {
            return Ok(()); // two links of one file: rename(2) does nothing
        }
        let relink = |t: &mut Table, id: BackingId, from: (Ino, &OsStr), to: (Ino, &OsStr)| {
            if let Some(n) = t.by_id.get(&id).copied().and_then(|i| t.nodes.get_mut(&i)) {
                n.links.retain(|(p, nm)| !(*p == from.0 && nm == from.1));
                n.links.retain(|(p, nm)| !(*p == to.0 && nm == to.1));
                n.links.insert(0, (to.0, to.1.to_owned()));
            }
        };
        if exchange {
            relink(&mut t, sid, (parent, name), (newparent, newname));
            if let Some(did) = did {
                // The destination node now sits at the source name.
                if let Some(n) = t.by_id.get(&did).copied().and_then(|i| t.nodes.get_mut(&i)) {
                    n.links
                        .retain(|(p, nm)| !(*p == newparent && nm == newname));
                    n.links.insert(0, (parent, name.to_owned()));
                }
            }
            return Ok(());
        }
        if let (Some(did), Some(dmd)) = (did, dmd) {
            Self::drop_link(&mut t, did, newparent, newname, dmd.nlink());
        }
        relink(&mut t, sid, (parent, name), (newparent, newname));
        Ok(())
    }

    // ----- directories -----

    pub fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let path = self.path_of(&lock(&self.table), ino)?;
        let mut entries = Vec::new();
        let parent = {
            let t = lock(&self.table);
            t.nodes
                .get(&ino)
                .and_then(|n| n.links.first().map(|l| l.0))
                .unwrap_or(ROOT_INO)
        };
        entries.push(DirEntry {
            ino,
            kind: Kind::Dir,
            name: ".".into(),
        });
        entries.push(DirEntry {
            ino: parent,
            kind: Kind::Dir,
            name: "..".into(),
        });
        for e in std::fs::read_dir(&path).map_err(io_ctx(&path))? {
            let e = e.map_err(io_ctx(&path))?;
            let name = e.file_name();
            if Self::is_reserved(ino, &name) {
                continue;
            }
            let Ok(md) = e.metadata() else { continue }; // raced with a removal
            let mut t = lock(&self.table);
            let child = Self::node_for(&mut t, ino, &name, &md);
            entries.push(DirEntry {
                ino: child,
                kind: Kind::of(&md),
                name,
            });
        }
        Ok(self.new_handle(Handle::Dir { entries }))
    }

    /// Entries from `offset` on, each with the offset of the entry after it.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let h = lock(&self.handles);
        match h.get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(FsError::new("not a directory handle", libc::EBADF)),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    // ----- open files -----

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// Opens a node's backing file (never through a symlink), read-write when allowed.
    fn open_backing(&self, t: &Table, ino: Ino) -> FsResult<(BPath, File)> {
        let path = self.path_of(t, ino)?;
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::ETXTBSY)
                ) =>
            {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_ctx(&path))?
            }
            Err(e) => return Err(io_ctx(&path)(e)),
        };
        Ok((path, f))
    }

    /// The node's content, opening it from the backing file if no handle holds it.
    fn load_content(&self, t: &mut Table, ino: Ino) -> FsResult<Content> {
        if let Some(c) = t.nodes.get(&ino).and_then(|n| n.content.clone()) {
            return Ok(c);
        }
        let (path, f) = self.open_backing(t, ino)?;
        let c = if backing::is_blob_file(&f).map_err(io_ctx(&path))? {
            let md = f.metadata().map_err(io_ctx(&path))?;
            let mut bytes = Vec::with_capacity(md.len() as usize);
            (&f).read_to_end(&mut bytes).map_err(io_ctx(&path))?;
            Content::Blob {
                blob: self.codec.open(bytes).map_err(named(path.display()))?,
                key: blob_key(&md),
                file: Arc::new(f),
            }
        } else {
            Content::Plain(Arc::new(f))
        };
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.content = Some(c.clone());
        }
        Ok(c)
    }

    pub fn open(&self, ino: Ino, flags: i32) -> FsResult<(u64, OpenReply)> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = write && flags & libc::O_TRUNC != 0;
        if ino == STATUS_INO {
            if write {
                return Err(FsError::new("the status file is read-only", libc::EACCES));
            }
            let data = self.status().to_json().into_bytes();
            return Ok((
                self.new_handle(Handle::Status { data }),
                OpenReply {
                    keep_cache: false,
                    direct_io: true,
                },
            ));
        }
        let content = {
            let mut t = lock(&self.table);
            if t.nodes
                .get(&ino)
                .is_some_and(|n| n.links.is_empty() && n.content.is_none())
            {
                return Err(Self::stale());
            }
            match t.nodes.get(&ino).map(|n| n.kind) {
                None => return Err(FsError::noent()),
                Some(Kind::Dir) => return Err(FsError::new("is a directory", libc::EISDIR)),
                Some(Kind::File) => {}
                Some(_) => return Err(FsError::new("not a regular file", libc::ENXIO)),
            }
            // O_TRUNC replaces the content without reading it (a damaged blob too).
            let c = if trunc {
                None
            } else {
                Some(self.load_content(&mut t, ino)?)
            };
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.opens += 1;
                n.writers += write as u32;
            }
            c
        };
        let fh = self.new_handle(Handle::File { ino, write });
        if trunc {
            if let Err(e) = self.truncate(ino, 0) {
                self.release(fh);
                return Err(e);
            }
            return Ok((fh, OpenReply::default()));
        }
        Ok((
            fh,
            OpenReply {
                keep_cache: matches!(content, Some(Content::Blob { .. })),
                direct_io: false,
            },
        ))
    }

    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64, OpenReply)> {
        Self::check_new_name(parent, name)?;
        let path = self.path_of(&lock(&self.table), parent)?.join(name);
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path)
        {
            Ok(f) => f,
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 =>
            {
                let attr = self.lookup(parent, name)?;
                let (fh, reply) = self.open(attr.ino, flags)?;
                return Ok((self.getattr(attr.ino)?, fh, reply));
            }
            Err(e) => return Err(io_ctx(&path)(e)),
        };
        chown_quiet(&path, uid, gid)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let md = f.metadata().map_err(io_ctx(&path))?;
        let ino = {
            let mut t = lock(&self.table);
            let ino = Self::node_for(&mut t, parent, name, &md);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.lookups += 1;
                n.opens += 1;
                n.writers += write as u32;
                n.content = Some(Content::Plain(Arc::new(f)));
            }
            ino
        };
        let fh = self.new_handle(Handle::File { ino, write });
        Ok((Self::attr_from(ino, &md, 0), fh, OpenReply::default()))
    }

    fn handle_ino(&self, fh: u64, need_write: bool) -> FsResult<Ino> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { ino, write }) if *write || !need_write => Ok(*ino),
            _ => Err(FsError::new("bad file handle", libc::EBADF)),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if let Some(Handle::Status { data }) = lock(&self.handles).get(&fh) {
            let start = (offset as usize).min(data.len());
            return Ok(data[start..(start + size as usize).min(data.len())].to_vec());
        }
        let ino = self.handle_ino(fh, false)?;
        let content = lock(&self.table)
            .nodes
            .get(&ino)
            .and_then(|n| n.content.clone())
            .ok_or_else(FsError::noent)?;
        match content {
            Content::Plain(f) => {
                let mut buf = vec![0u8; size as usize];
                let n = read_full_at(&f, &mut buf, offset).map_err(io_ctx("pread"))?;
                buf.truncate(n);
                Ok(buf)
            }
            Content::Blob { blob, key, .. } => self
                .read_blob(&*blob, key, offset, size as u64)
                .map_err(|e| self.name_codec_err(ino, e)),
        }
    }

    /// Reads `[offset, offset+size)` of a blob, decoding only the extents not cached.
    fn read_blob(
        &self,
        blob: &dyn OpenBlob,
        key: BlobKey,
        offset: u64,
        size: u64,
    ) -> FsResult<Vec<u8>> {
        let len = blob.len();
        if offset >= len || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size).min(len);
        let ext = blob.extents();
        let first = ext.partition_point(|e| e.0 + e.1 <= offset);
        let last = ext.partition_point(|e| e.0 < end);
        let gate = lock(&self.decoding).entry(key).or_default().clone();
        let _one = lock(&gate);
        let mut parts: Vec<Option<Arc<Vec<u8>>>> = {
            let mut c = lock(&self.cache);
            (first..last)
                .map(|i| c.lru.get(&(key, i)).cloned())
                .collect()
        };
        let missing: Vec<usize> = (first..last)
            .filter(|i| parts[i - first].is_none())
            .collect();
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            log::debug!("decoding extents {lo}..={hi} of blob {key:?}");
            let bytes = blob.decode(lo..hi + 1)?;
            let mut at = 0usize;
            let mut c = lock(&self.cache);
            for i in lo..=hi {
                let l = ext[i].1 as usize;
                let piece = bytes
                    .get(at..at + l)
                    .ok_or_else(|| FsError::new("decoded extent too short", libc::EIO))?;
                let v = Arc::new(piece.to_vec());
                parts[i - first] = Some(v.clone());
                c.insert((key, i), v);
                at += l;
            }
        }
        drop(_one);
        drop(gate);
        {
            let mut d = lock(&self.decoding);
            if d.get(&key).is_some_and(|g| Arc::strong_count(g) == 1) {
                d.remove(&key);
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, p) in (first..last).zip(parts) {
            let p = p.ok_or_else(|| FsError::new("extent missing", libc::EIO))?;
            let (s, l) = ext[i];
            let from = offset.max(s) - s;
            let to = end.min(s + l) - s;
            out.extend_from_slice(&p[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Makes the node's content plaintext (decoding a blob fully) and returns its fd.
    /// Counts as a modification.
    fn ensure_plain(&self, ino: Ino) -> FsResult<Arc<File>> {
        loop {
            let (blob, key) = {
                let mut t = lock(&self.table);
                let c = self.load_content(&mut t, ino)?;
                if let Some(n) = t.nodes.get_mut(&ino) {
                    n.gen += 1;
                    n.dirty = true;
                }
                match c {
                    Content::Plain(f) => return Ok(f),
                    Content::Blob { blob, key, .. } => (blob, key),
                }
            };
            log::debug!("inode {ino}: decoding for write");
            let data = blob
                .decode(0..blob.extents().len())
                .map_err(|e| self.name_codec_err(ino, e.into()))?;
            let mut t = lock(&self.table);
            if let Some(Some(Content::Blob { key: k, .. })) = t.nodes.get(&ino).map(|n| &n.content)
            {
                if *k == key {
                    self.replace_with_plain(&mut t, ino, &data)?;
                }
            }
        }
    }

    /// Replaces a blob node's content with plaintext `data` (under the table lock).
    fn replace_with_plain(&self, t: &mut Table, ino: Ino, data: &[u8]) -> FsResult<()> {
        let old = self.load_content(t, ino)?;
        let Content::Blob { file: like, .. } = &old else {
            // Already plaintext: rewrite in place.
            let f = old.file();
            f.set_len(0).map_err(io_ctx("truncate"))?;
            f.write_all_at(data, 0).map_err(io_ctx("pwrite"))?;
            return Ok(());
        };
        self.replace_blob_file(t, ino, like, data)
    }

    /// Replaces the blob file `like` of node `ino` with plaintext `data` (under the lock).
    fn replace_blob_file(
        &self,
        t: &mut Table,
        ino: Ino,
        like: &Arc<File>,
        data: &[u8],
    ) -> FsResult<()> {
        let orphan = t.nodes.get(&ino).is_some_and(|n| n.links.is_empty());
        let md = like.metadata().map_err(io_ctx("fstat"))?;
        if md.nlink() > 1 && !orphan {
            // Hard-linked: a rename would split the links, so rewrite in place.
            like.set_len(0).map_err(io_ctx("truncate"))?;
            like.write_all_at(data, 0).map_err(io_ctx("pwrite"))?;
            let name = CString::new(backing::STATE_XATTR)
                .map_err(|_| FsError::new("xattr name", libc::EINVAL))?;
            cvt(unsafe { libc::fremovexattr(like.as_raw_fd(), name.as_ptr()) })
                .map_err(io_ctx("fremovexattr"))?;
            like.sync_all().map_err(io_ctx("fsync"))?;
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.content = Some(Content::Plain(like.clone()));
            }
            return Ok(());
        }
        let (tmp, f) = self
            .backing
            .prepare(data, like, false)
            .map_err(io_ctx("staging plaintext"))?;
        if orphan {
            let _ = std::fs::remove_file(&tmp);
        } else {
            let path = self.path_of(t, ino)?;
            if let Err(e) = self.backing.commit(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_ctx(&path)(e));
            }
        }
        let nmd = f.metadata().map_err(io_ctx("fstat"))?;
        let Some(n) = t.nodes.get_mut(&ino) else {
            return Ok(());
        };
        let old_id = n.id;
        n.id = (nmd.dev(), nmd.ino());
        n.content = Some(Content::Plain(Arc::new(f)));
        let new_id = n.id;
        if !orphan {
            t.by_id.remove(&old_id);
            t.by_id.insert(new_id, ino);
        }
        Ok(())
    }

    /// Sets the size; to 0 without decoding anything.
    fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if size == 0 {
            let mut t = lock(&self.table);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.gen += 1;
                n.dirty = true;
            }
            return match self.load_content(&mut t, ino) {
                Ok(Content::Plain(f)) => f.set_len(0).map_err(io_ctx("truncate")),
                Ok(Content::Blob { .. }) => self.replace_with_plain(&mut t, ino, &[]),
                Err(FsError::Codec(e)) => {
                    // A blob that does not even parse: emptying it needs none of it.
                    log::warn!("{e}; truncated to empty");
                    let (_, f) = self.open_backing(&t, ino)?;
                    self.replace_blob_file(&mut t, ino, &Arc::new(f), &[])
                }
                Err(e) => Err(e),
            };
        }
        let f = self.ensure_plain(ino)?;
        f.set_len(size).map_err(io_ctx("truncate"))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let ino = self.handle_ino(fh, true)?;
        let f = self.ensure_plain(ino)?;
        // A write that fills the disk part-way is a short write (as on ext4): the caller
        // learns how much landed, and its next write gets ENOSPC.
        let mut n = 0;
        while n < data.len() {
            match f.write_at(&data[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) if n > 0 => break,
                Err(e) => return Err(io_ctx("pwrite")(e)),
            }
        }
        Ok(n as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let Ok(ino) = self.handle_ino(fh, false) else {
            return Ok(());
        };
        let c = lock(&self.table)
            .nodes
            .get(&ino)
            .and_then(|n| n.content.clone());
        if let Some(Content::Plain(f)) = c {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(io_ctx("fsync"))?;
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return;
        };
        let Handle::File { ino, write } = h else {
            return;
        };
        let mut t = lock(&self.table);
        let mut queue = false;
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
            if write {
                n.writers = n.writers.saturating_sub(1);
            }
            queue = n.writers == 0 && n.dirty && !n.links.is_empty();
            if n.opens == 0 {
                n.content = None;
            }
        }
        Self::maybe_remove(&mut t, ino);
        drop(t);
        if queue {
            log::debug!("inode {ino}: queued for compression");
            self.queue.push(ino);
        }
    }

    pub fn setattr(&self, ino: Ino, a: &SetAttr) -> FsResult<Attr> {
        if ino == STATUS_INO {
            return Err(FsError::new("the status file is read-only", libc::EPERM));
        }
        if let Some(size) = a.size {
            self.truncate(ino, size)?;
        }
        let mut t = lock(&self.table);
        let target = self.target(&t, ino)?;
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.gen += 1; // a compression in flight would copy stale metadata
            if a.size.is_some() && n.opens == 0 {
                n.content = None;
            }
        }
        let fd_or_path =
            |f: &dyn Fn(libc::c_int, &CString, libc::c_int) -> libc::c_int| -> FsResult<()> {
                match &target {
                    Target::Path(p) => {
                        cvt(f(libc::AT_FDCWD, &cpath(p)?, libc::AT_SYMLINK_NOFOLLOW))
                            .map_err(io_ctx(p))
                    }
                    Target::Orphan(file) => cvt(f(
                        file.as_raw_fd(),
                        &CString::default(),
                        libc::AT_EMPTY_PATH,
                    ))
                    .map_err(io_ctx("orphan")),
                }
            };
        if a.uid.is_some() || a.gid.is_some() {
            let (u, g) = (a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX));
            fd_or_path(&|dir, p, fl| unsafe { libc::fchownat(dir, p.as_ptr(), u, g, fl) })?;
        }
        if let Some(mode) = a.mode {
            match &target {
                // Linux cannot chmod a symlink itself; the kernel never asks.
                Target::Path(p) => {
                    cvt(unsafe { libc::chmod(cpath(p)?.as_ptr(), (mode & 0o7777) as libc::mode_t) })
                        .map_err(io_ctx(p))?
                }
                Target::Orphan(f) => {
                    cvt(unsafe { libc::fchmod(f.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })
                        .map_err(io_ctx("fchmod"))?
                }
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = [timespec(a.atime), timespec(a.mtime)];
            fd_or_path(&|dir, p, fl| unsafe {
                libc::utimensat(dir, p.as_ptr(), ts.as_ptr(), fl & libc::AT_SYMLINK_NOFOLLOW)
            })
            .or_else(|e| match &target {
                Target::Orphan(f) => cvt(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })
                    .map_err(io_ctx("futimens")),
                _ => Err(e),
            })?;
        }
        let queue = a.size.is_some()
            && t.nodes
                .get(&ino)
                .is_some_and(|n| n.writers == 0 && n.dirty && !n.links.is_empty());
        drop(t);
        if queue {
            self.queue.push(ino);
        }
        self.attr_of(ino, &target)
    }

    pub fn statfs(&self) -> FsResult<Statfs> {
        let p = cpath(self.backing.root())?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statvfs(p.as_ptr(), &mut s) }).map_err(io_ctx("statvfs"))?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    // ----- xattrs (ours hidden) -----

    fn xattr_path(&self, ino: Ino) -> FsResult<BPath> {
        if ino == STATUS_INO {
            return Err(FsError::new("no xattrs on the status file", libc::ENOTSUP));
        }
        self.path_of(&lock(&self.table), ino)
    }

    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        if name.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
            return Err(FsError::new("no such attribute", libc::ENODATA));
        }
        let p = self.xattr_path(ino)?;
        backing::lget_xattr(&p, name)
            .map_err(io_ctx(&p))?
            .ok_or_else(|| FsError::new("no such attribute", libc::ENODATA))
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let p = self.xattr_path(ino)?;
        let mut out = Vec::new();
        for n in backing::llist_xattr(&p).map_err(io_ctx(&p))? {
            if !n.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        if name.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
            return Err(FsError::new(
                "xattr name reserved by nacrithfs",
                libc::EPERM,
            ));
        }
        let p = self.xattr_path(ino)?;
        // Under the lock, ordered with content replacement (which copies xattrs).
        let mut t = lock(&self.table);
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.gen += 1;
        }
        backing::lset_xattr(&p, name, value, flags).map_err(io_ctx(&p))
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> FsResult<()> {
        if name.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
            return Err(FsError::new("no such attribute", libc::ENODATA));
        }
        let p = self.xattr_path(ino)?;
        backing::lremove_xattr(&p, name).map_err(io_ctx(&p))
    }

    // ----- compression -----

    pub fn status(&self) -> Status {
        let (queued, active) = self.queue.counts();
        let writing = lock(&self.table)
            .nodes
            .values()
            .filter(|n| n.dirty && n.writers > 0 && !n.links.is_empty())
            .count();
        let c = &self.counters;
        Status {
            queued: queued as u64,
            compressing: active as u64,
            writing: writing as u64,
            compressed: c.compressed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes_before: c.bytes_before.load(Ordering::Relaxed),
            bytes_after: c.bytes_after.load(Ordering::Relaxed),
        }
    }

    fn publish(&self) {
        self.backing.publish_status(&self.status().to_json());
    }

    /// Runs one worker: takes queued files and compresses them until shutdown.
    pub fn worker(&self) {
        while let Some(ino) = self.queue.pop() {
            if let Err(e) = self.compress_one(ino) {
                log::warn!(
                    "{}: compression failed, the file stays plaintext: {e}",
                    self.describe(ino)
                );
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = lock(&self.table).nodes.get_mut(&ino) {
                    n.dirty = false;
                }
            }
            self.queue.done();
            self.publish();
        }
    }

    /// Stops the workers once their current job is done.
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }

    /// Runs the queue to empty on the calling thread (for tests).
    pub fn drain(&self) {
        loop {
            let (q, _) = self.queue.counts();
            if q == 0 {
                return;
            }
            if let Some(ino) = self.queue.pop() {
                if let Err(e) = self.compress_one(ino) {
                    log::warn!("inode {ino}: {e}");
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                self.queue.done();
            }
        }
    }

    /// Compresses one file and atomically replaces its plaintext with the blob, unless
    /// it changed or was opened for writing meanwhile (then it is queued again).
    fn compress_one(&self, ino: Ino) -> FsResult<()> {
        let (path, id, gen) = {
            let t = lock(&self.table);
            let Some(n) = t.nodes.get(&ino) else {
                return Ok(());
            };
            if n.links.is_empty() || n.writers > 0 || n.kind != Kind::File {
                return Ok(()); // gone, or its last writer's close queues it again
            }
            (self.path_of(&t, ino)?, n.id, n.gen)
        };
        let f = File::open(&path).map_err(io_ctx(&path))?;
        let md = f.metadata().map_err(io_ctx(&path))?;
        if (md.dev(), md.ino()) != id || backing::is_blob_file(&f).map_err(io_ctx(&path))? {
            return Ok(());
        }
        if md.len() == 0 || md.nlink() > 1 {
            // Empty files stay empty plaintext; hard-linked files stay plaintext (a
            // rename would split their links).
            if let Some(n) = lock(&self.table).nodes.get_mut(&ino) {
                n.dirty = false;
            }
            return Ok(());
        }
        let mut data = Vec::with_capacity(md.len() as usize);
        (&f).read_to_end(&mut data).map_err(io_ctx(&path))?;
        let t0 = std::time::Instant::now();
        let blob = self.codec.compress(&data)?;
        let (tmp, tf) = self
            .backing
            .prepare(&blob, &f, true)
            .map_err(io_ctx("staging blob"))?;
        let mut t = lock(&self.table);
        let ok = t
            .nodes
            .get(&ino)
            .is_some_and(|n| n.gen == gen && n.writers == 0 && !n.links.is_empty() && n.id == id);
        let path_now = if ok { self.path_of(&t, ino).ok() } else { None };
        let still = path_now
            .as_ref()
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .is_some_and(|m| (m.dev(), m.ino()) == id && m.nlink() == 1);
        let (Some(target), true) = (path_now, still) else {
            drop(t);
            let _ = std::fs::remove_file(&tmp);
            log::debug!("inode {ino}: changed while compressing; queued again");
            let requeue = {
                let mut t = lock(&self.table);
                t.nodes.get_mut(&ino).is_some_and(|n| {
                    n.dirty = true;
                    n.writers == 0 && !n.links.is_empty()
                })
            };
            if requeue {
                self.queue.push(ino);
            }
            return Ok(());
        };
        if let Err(e) = self.backing.commit(&tmp, &target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_ctx(&target)(e));
        }
        let nmd = tf.metadata().map_err(io_ctx("fstat"))?;
        let new_id = (nmd.dev(), nmd.ino());
        let opened = if t.nodes.get(&ino).is_some_and(|n| n.content.is_some()) {
            Some(self.codec.open(blob.clone()))
        } else {
            None
        };
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.id = new_id;
            n.dirty = false;
            if let Some(Ok(b)) = opened {
                n.content = Some(Content::Blob {
                    blob: b,
                    key: blob_key(&nmd),
                    file: Arc::new(tf),
                });
            } else if opened.is_some() {
                n.content = None;
            }
        }
        t.by_id.remove(&id);
        t.by_id.insert(new_id, ino);
        drop(t);
        lock(&self.headers).insert(blob_key(&nmd), data.len() as u64);
        let c = &self.counters;
        c.compressed.fetch_add(1, Ordering::Relaxed);
        c.bytes_before
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        c.bytes_after
            .fetch_add(blob.len() as u64, Ordering::Relaxed);
        log::info!(
            "{}: {} -> {} bytes in {:.1}s",
            target.display(),
            data.len(),
            blob.len(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

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

/// Prefixes a codec failure with the file it concerns.
fn named(what: impl std::fmt::Display) -> impl FnOnce(CodecError) -> FsError {
    move |mut e| {
        e.msg = format!("{what}: {}", e.msg);
        FsError::Codec(e)
    }
}

/// Gives a new entry the caller's owner; a non-root daemon cannot, and keeps its own.
fn chown_quiet(path: &Path, uid: u32, gid: u32) -> FsResult<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        Err(e) => Err(io_ctx(path)(e)),
    }
}
