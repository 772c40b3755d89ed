//! The three per-shard operations: pack (SRC → backing layout), unpack (backing layout
//! → plain tree) and verify (decode every blob and check it).
//!
//! All three share a shape: walk the tree, take this shard's entries, mirror every
//! directory (each shard does it; `mkdir` is idempotent), then handle the entries one by
//! one, skipping those already done. A failing entry is reported and the others go on;
//! the shard then fails as a whole, and a rerun retries only what is not done. Only a
//! missing model stops a shard at once.

mod pack;
mod stream;
mod unpack;
mod verify;

pub use pack::pack;
pub use unpack::unpack;
pub use verify::verify;

use super::manifest::{
    self, fingerprint_str, sha256_hex, Entry, EntryKind, Header, PartialManifest,
};
use super::plan::{self, shard_items, walk, Item, ItemKind};
use super::progress::Meter;
use super::staging::Staging;
use super::{LazyEngine, PackError, Shard};
use nacrithfs_engine::CompressOptions;
use nacrithfs_fs::store::backing::{is_blob_file, is_blob_path, INTERNAL_DIR};
use nc06::format::Blob;
use nc06::Fingerprint;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directory inside an unpack's output that holds its temporary files (removed when
/// the last shard finishes).
const UNPACK_TMP: &str = ".nacrithfs-unpack";

/// What `pack` does.
pub struct PackOptions {
    /// The tree to pack.
    pub src: PathBuf,
    /// The backing directory to write.
    pub dest: PathBuf,
    /// This process's shard.
    pub shard: Shard,
    /// The mount's defaults unless there is a reason to differ.
    pub compress: CompressOptions,
    /// Input bytes compressed in one model run: small files share its streams. A killed
    /// shard loses at most one batch of work. The CLI's default fills every stream with
    /// one chunk (streams × chunk size).
    pub batch_bytes: u64,
    /// Bytes of a file coded at a time: a larger file is compressed alone, a window at
    /// a time, as the mount does ([`nacrithfs_codec::STREAM_WINDOW`] by default).
    pub window: usize,
}

/// What `verify` checks.
pub struct VerifyOptions {
    /// The packed tree.
    pub dest: PathBuf,
    /// This process's shard.
    pub shard: Shard,
    /// Manifest to check against (default: `DEST/.nacrithfs/manifest.jsonl` if present).
    pub manifest: Option<PathBuf>,
}

/// What one shard did.
#[derive(Clone, Debug)]
pub struct Report {
    /// `pack`, `unpack` or `verify`.
    pub op: &'static str,
    /// The shard it ran.
    pub shard: Shard,
    /// Entries of this shard.
    pub files: u64,
    /// Entries that took work (compressed, decoded).
    pub worked: u64,
    /// Entries found already done.
    pub skipped: u64,
    /// Original bytes of the entries.
    pub bytes: u64,
    /// Bytes the entries take in the packed tree.
    pub stored: u64,
    /// Verify: files in the packed tree that the manifest does not list.
    pub unlisted: u64,
    /// The manifest to check against.
    pub manifest: Option<PathBuf>,
    /// The fingerprint of this machine's model and build, if it was loaded.
    pub fingerprint: Option<Fingerprint>,
}

impl Report {
    fn new(op: &'static str, shard: Shard, files: usize) -> Report {
        Report {
            op,
            shard,
            files: files as u64,
            worked: 0,
            skipped: 0,
            bytes: 0,
            stored: 0,
            unlisted: 0,
            manifest: None,
            fingerprint: None,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bpb = if self.bytes > 0 {
            self.stored as f64 * 8.0 / self.bytes as f64
        } else {
            0.0
        };
        match self.op {
            "pack" => write!(
                f,
                "pack {}: {} files ({} packed, {} already packed), {} -> {} bytes ({bpb:.3} bits/byte)",
                self.shard, self.files, self.worked, self.skipped, self.bytes, self.stored
            )?,
            "unpack" => write!(
                f,
                "unpack {}: {} files ({} written, {} already there), {} bytes",
                self.shard, self.files, self.worked, self.skipped, self.bytes
            )?,
            _ => write!(f, "verify {}: {} files ok ({} blobs decoded), {} bytes", self.shard, self.files, self.worked, self.bytes)?,
        }
        if self.unlisted > 0 {
            write!(f, "; {} files not in the manifest", self.unlisted)?;
        }
        if let Some(m) = &self.manifest {
            write!(f, "; manifest {}", m.display())?;
        }
        if let Some(fp) = &self.fingerprint {
            write!(f, "; this build: {fp}")?;
        }
        Ok(())
    }
}

/// `dir` made absolute; it must exist and be a directory.
/// Takes a backing directory's lock shared: shards run side by side, but not beside a
/// mount of it (EBUSY). A tree that cannot hold the lock (read-only media) is used
/// without it.
fn lock_shared(dir: &Path) -> Result<Option<nacrithfs_fs::store::BackingLock>, PackError> {
    use nacrithfs_fs::store::{Backing, LockMode};
    match Backing::open(dir).and_then(|b| b.lock(LockMode::Shared)) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.errno() == libc::EBUSY => Err(e.into()),
        Err(e) => {
            log::debug!("no lock on {}: {}", dir.display(), e.report());
            Ok(None)
        }
    }
}

fn existing_dir(dir: &Path) -> Result<PathBuf, PackError> {
    let no = |source| PackError::NoInput {
        path: dir.to_path_buf(),
        source,
    };
    let p = dir.canonicalize().map_err(no)?;
    if !p.is_dir() {
        return Err(no(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(p)
}

/// `dir`, created if needed, made absolute; refused (before anything is created) if it
/// and `input` contain each other.
fn output_dir(dir: &Path, input: &Path) -> Result<PathBuf, PackError> {
    disjoint(input, &resolve(dir)?)?;
    std::fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    dir.canonicalize().map_err(PackError::io(dir))
}

/// `p` made absolute with symlinks resolved as far as it exists, creating nothing.
fn resolve(p: &Path) -> Result<PathBuf, PackError> {
    let abs = std::path::absolute(p).map_err(PackError::io(p))?;
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut c) = base.canonicalize() {
            c.extend(rest.iter().rev());
            return Ok(c);
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                base = parent;
            }
            _ => return Ok(abs.clone()),
        }
    }
}

fn disjoint(a: &Path, b: &Path) -> Result<(), PackError> {
    if a.starts_with(b) || b.starts_with(a) {
        return Err(PackError::Usage(format!(
            "{} and {} must not contain each other",
            a.display(),
            b.display()
        )));
    }
    Ok(())
}

fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>, PackError> {
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(PackError::io(path))?;
    Ok(data)
}

/// Creates every directory of `dirs` under `to`, with `from`'s modes (plus owner rwx,
/// so that other shards can still write into it) and, when allowed, owners.
fn mirror_dirs(from: &Path, to: &Path, dirs: &[PathBuf]) -> Result<(), PackError> {
    for rel in dirs {
        let (s, d) = (from.join(rel), to.join(rel));
        let md = std::fs::symlink_metadata(&s).map_err(PackError::io(&s))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {
                // Not permitted unless root: then the directory is simply ours.
                let _ = std::os::unix::fs::lchown(&d, Some(md.uid()), Some(md.gid()));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let dm = std::fs::symlink_metadata(&d).map_err(PackError::io(&d))?;
                if !dm.is_dir() {
                    return Err(PackError::Io {
                        path: d,
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and is not a directory",
                        ),
                    });
                }
            }
            Err(e) => return Err(PackError::Io { path: d, source: e }),
        }
        let mode = (md.mode() & 0o7777) | 0o700;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .map_err(PackError::io(&d))?;
    }
    Ok(())
}

/// Whether `path` is already a regular file of `len` bytes with CRC-32C `crc()`
/// (asked only when the length matches).
fn same_plain(
    path: &Path,
    len: u64,
    crc: impl FnOnce() -> Result<u32, PackError>,
) -> Result<bool, PackError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_file() && md.len() == len => {}
        _ => return Ok(false),
    }
    let f = File::open(path).map_err(PackError::io(path))?;
    Ok(stream::digest(&f, path)?.crc == crc()?)
}

/// Makes `dest` a symlink to `target` unless it already is one. Returns whether it
/// wrote anything.
fn mirror_symlink(staging: &Staging, target: &Path, dest: &Path) -> Result<bool, PackError> {
    if std::fs::read_link(dest).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let tmp = staging.symlink(target)?;
    staging.commit_symlink(&tmp, dest)?;
    Ok(true)
}

fn symlink_entry(rel: &Path, target: PathBuf, shard: u32) -> Entry {
    let b = target.as_os_str().as_bytes();
    Entry {
        rel: rel.to_path_buf(),
        kind: EntryKind::Symlink,
        size: b.len() as u64,
        sha256: sha256_hex(b),
        crc32c: crc32c::crc32c(b),
        stored: 0,
        fingerprint: None,
        needs_model: None,
        target: Some(target),
        shard,
    }
}

/// Whether an error means no file can succeed (the model cannot be loaded or run).
fn fatal(e: PackError) -> Result<PackError, PackError> {
    match e {
        PackError::Model(_) => Err(e),
        PackError::Codec {
            source: nacrithfs_engine::Error::Model(m),
            ..
        }
        | PackError::Coding {
            source: nacrithfs_engine::Error::Model(m),
            ..
        } => Err(PackError::Model(m)),
        other => Ok(other),
    }
}

/// Counts a shard's entries as they finish or fail, with the progress meter.
struct Tally {
    op: &'static str,
    shard: Shard,
    total: usize,
    meter: Meter,
    failures: Vec<PackError>,
}

impl Tally {
    fn new(op: &'static str, shard: Shard, total: usize, bytes: u64) -> Tally {
        Tally {
            op,
            shard,
            total,
            meter: Meter::new(op, shard, total as u64, bytes),
            failures: Vec::new(),
        }
    }

    fn ok(&mut self, report: &mut Report, size: u64, worked: bool) {
        if worked {
            report.worked += 1;
        } else {
            report.skipped += 1;
        }
        self.meter.done(size, worked);
    }

    /// Records a failed entry; a fatal error (no model) is returned instead.
    fn fail(&mut self, size: u64, e: PackError) -> Result<(), PackError> {
        let e = fatal(e)?;
        self.meter.log(
            log::Level::Error,
            &format!("{} {}: {e}", self.op, self.shard),
        );
        self.meter.done(size, false);
        self.failures.push(e);
        Ok(())
    }

    /// Ok when no entry failed.
    fn finish(mut self) -> Result<(), PackError> {
        self.meter.finish();
        if self.failures.is_empty() {
            return Ok(());
        }
        let failed = self.failures.len();
        let first = Box::new(self.failures.swap_remove(0));
        Err(PackError::Failed {
            op: self.op,
            shard: self.shard,
            failed,
            total: self.total,
            first,
        })
    }
}

/// Runs `one` over `items`, keeping count; fails at the first fatal error, and at the
/// end if any item failed.
fn each<T>(
    op: &'static str,
    shard: Shard,
    items: &[T],
    size: impl Fn(&T) -> u64,
    report: &mut Report,
    mut one: impl FnMut(&T, &mut Report) -> Result<bool, PackError>,
) -> Result<(), PackError> {
    let mut tally = Tally::new(op, shard, items.len(), items.iter().map(&size).sum());
    for item in items {
        match one(item, report) {
            Ok(worked) => tally.ok(report, size(item), worked),
            Err(e) => tally.fail(size(item), e)?,
        }
    }
    tally.finish()
}
