//! The backing directory: where each file lives, how a blob is told from plaintext,
//! atomic replacement of a file's content, and start-up recovery.
//!
//! Layout: `MNT/a/b.txt` is `BACKING/a/b.txt`. A regular file is either plaintext or an
//! NC06 blob; blobs carry the xattr `user.nacrithfs.state=nc06`, set on the temporary
//! file before it is renamed into place, so the marker and the content change in one
//! atomic `rename(2)`. A file without the marker is plaintext, whatever its first bytes
//! are (a plaintext file that starts with "NC06" is never mistaken for a blob, and files
//! put into BACKING by other tools are simply plaintext, compressed at the next mount).
//!
//! Internal state lives in `BACKING/.nacrithfs/`: `tmp/` holds temporary files being
//! written (a crash leaves at most some of them, deleted at the next mount), and
//! `status.json` the daemon's last published counters. Every content change is one
//! `rename(2)` of a complete, fsynced temporary file over the target, so there is no
//! multi-step operation to journal: after a crash each file is either its old or its new
//! content, never both or neither.

use super::atomic::AtomicFile;
use super::xattr::{cstr, cvt, fget_xattr, flist_xattr, fset_xattr, lget_xattr};
use crate::error::{FsResult, IoContext};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Name of the internal directory at the root of BACKING (hidden from the mount).
pub const INTERNAL_DIR: &str = ".nacrithfs";
/// The xattr that marks a blob.
pub const STATE_XATTR: &str = "user.nacrithfs.state";
/// Value of [`STATE_XATTR`] on a blob.
pub const STATE_BLOB: &[u8] = b"nc06";
/// Prefix of every xattr name reserved for nacrithfs (hidden from the mount).
pub const RESERVED_XATTR_PREFIX: &[u8] = b"user.nacrithfs.";

/// A backing path to hand to syscalls (see [`Backing::sys_path`]); derefs to a `Path`.
#[derive(Clone)]
pub struct BPath {
    path: PathBuf,
    /// The directory fd a `/proc/self/fd/N/...` path goes through.
    dir: Option<Arc<OwnedFd>>,
}

impl BPath {
    /// `self/name`, through the same directory fd.
    pub fn join(&self, name: impl AsRef<Path>) -> BPath {
        BPath {
            path: self.path.join(name),
            dir: self.dir.clone(),
        }
    }
}

impl std::ops::Deref for BPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for BPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for BPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path.fmt(f)
    }
}

fn open_fd(fd: libc::c_int) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: fd was just returned by a successful open(2)/openat(2) and nothing
        // else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The backing directory of one mount.
#[derive(Debug)]
pub struct Backing {
    root: PathBuf,
    tmp: PathBuf,
}

/// Prefix of the daemon's temporary files in `.nacrithfs/tmp`: none, so they are
/// `PID-N.tmp` (pack's shards use their own prefixes in the same directory).
const TMP_PREFIX: &str = "";

impl Backing {
    /// Opens `root` as a backing directory, creating the internal directories.
    pub fn open(root: &Path) -> FsResult<Backing> {
        let root = root.canonicalize().ctx(root.display())?;
        let tmp = root.join(INTERNAL_DIR).join("tmp");
        // Private: temporary files hold plaintext of files whatever their modes.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .ctx(tmp.display())?;
        Ok(Backing { root, tmp })
    }

    /// The backing directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute backing path of a path relative to the mount root.
    pub fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// A path for syscalls on `rel` (relative to the mount root). The absolute backing
    /// path is longer than the path the caller used through the mount, by the length
    /// of the backing root, so a name valid in the mount can exceed PATH_MAX here. Such
    /// a path is reached instead through `/proc/self/fd/N/NAME`, N being an `O_PATH` fd
    /// of its parent directory opened one component at a time with `O_NOFOLLOW` (never
    /// through a symlink), which the returned value keeps open.
    pub fn sys_path(&self, rel: &Path) -> FsResult<BPath> {
        let abs = self.path(rel);
        // Room for one more component (callers join a new name onto a directory).
        if abs.as_os_str().len() + 2 * (libc::NAME_MAX as usize + 1) < libc::PATH_MAX as usize {
            return Ok(BPath {
                path: abs,
                dir: None,
            });
        }
        let walk = || -> std::io::Result<BPath> {
            let mut comps: Vec<&OsStr> = rel.iter().collect();
            let last = comps.pop();
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let root = cstr(self.root.as_os_str())?;
            // SAFETY: root is a NUL-terminated path; the result is checked by open_fd.
            let mut fd = open_fd(unsafe { libc::open(root.as_ptr(), flags) })?;
            for c in comps {
                let name = cstr(c)?;
                // SAFETY: fd is an open directory fd and name a NUL-terminated name.
                fd = open_fd(unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), flags) })?;
            }
            let mut path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            if let Some(l) = last {
                path.push(l);
            }
            Ok(BPath {
                path,
                dir: Some(Arc::new(fd)),
            })
        };
        walk().ctx(abs.display())
    }

    /// Deletes leftovers of interrupted writes: every temporary file. Returns how many.
    pub fn clean_tmp(&self) -> FsResult<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.tmp).ctx(self.tmp.display())? {
            let e = e.ctx(self.tmp.display())?;
            let p = e.path();
            let r = if e.file_type().ctx(p.display())?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.ctx(p.display())?;
            n += 1;
        }
        Ok(n)
    }

    /// Every regular plaintext file under the root (relative paths), skipping the
    /// internal directory: the files a previous session left to compress.
    pub fn plaintext_files(&self) -> FsResult<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.sys_path(&rel)?;
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) => {
                    log::warn!("recovery: cannot list {}: {e}", dir.display());
                    continue;
                }
            };
            for e in rd {
                let e = e.ctx(dir.display())?;
                if rel.as_os_str().is_empty() && e.file_name() == INTERNAL_DIR {
                    continue;
                }
                let child = rel.join(e.file_name());
                let ft = e.file_type().ctx(child.display())?;
                if ft.is_dir() {
                    stack.push(child);
                } else if ft.is_file() {
                    let p = dir.join(e.file_name());
                    if !is_blob_path(&p).ctx(p.display())? {
                        out.push(child);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates a new temporary file under `.nacrithfs/tmp`.
    pub fn temp_file(&self) -> FsResult<AtomicFile> {
        AtomicFile::create_in(&self.tmp, TMP_PREFIX)
    }

    /// Writes `data` to a new temporary file with the metadata of `like` (mode, owner,
    /// times, user xattrs) and, for a blob, the blob marker; fsyncs it. The caller
    /// renames it into place with [`Backing::commit`], or drops it.
    pub fn prepare(&self, data: &[u8], like: &File, blob: bool) -> FsResult<AtomicFile> {
        let mut f = self.temp_file()?;
        stage(&mut f, data, like, blob)?;
        Ok(f)
    }

    /// Renames a prepared temporary file over `target` and syncs the directory.
    pub fn commit(&self, tmp: AtomicFile, target: &Path) -> FsResult<File> {
        tmp.commit_with(target, |point| fault_pause(point, target))
    }

    /// Publishes `json` as `.nacrithfs/status.json` (atomically).
    pub fn publish_status(&self, json: &str) {
        let dst = self.root.join(INTERNAL_DIR).join("status.json");
        let r = self.temp_file().and_then(|mut f| {
            f.write_all(json.as_bytes())?;
            f.commit(&dst)
        });
        if let Err(e) = r {
            log::debug!("cannot publish status: {}", e.report());
        }
    }
}

/// Fills a temporary file: `data`, then the metadata of `like` (mode, owner, times,
/// user xattrs) and, for a blob, the blob marker, then fsync. What the filesystem and
/// `pack` write before every rename into BACKING.
pub fn stage(f: &mut AtomicFile, data: &[u8], like: &File, blob: bool) -> FsResult<()> {
    let what = f.path().display().to_string();
    f.write_all(data)?;
    copy_metadata(like, f.file()).ctx(&what)?;
    if blob {
        fset_xattr(f.file(), STATE_XATTR, STATE_BLOB).ctx(&what)?;
    }
    f.sync()
}

/// Crash-test hook: with `NACRITHFS_FAULT=POINT:MS` in the daemon's environment, every
/// [`Backing::commit`] sleeps MS milliseconds at POINT (`before-rename`: the temporary
/// file is complete and synced, the target unchanged; `after-rename`: the target is
/// replaced, the directory not yet synced, the inode table not yet updated) after
/// logging it, so tests/crash.rs can kill -9 the daemon exactly there. Unset, as always
/// outside those tests, it costs one initialised `OnceLock` read per commit.
fn fault_pause(point: &str, target: &Path) {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("NACRITHFS_FAULT").ok()?;
        let (p, ms) = v.split_once(':')?;
        Some((p.to_owned(), ms.parse().ok()?))
    });
    if let Some((p, ms)) = spec {
        if p == point {
            log::warn!(
                "NACRITHFS_FAULT: pausing {ms} ms {point} of {}",
                target.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}

/// Copies mode, owner, access/modification times and the user's xattrs (not the
/// reserved `user.nacrithfs.*` ones).
pub fn copy_metadata(from: &File, to: &File) -> std::io::Result<()> {
    let md = from.metadata()?;
    for name in flist_xattr(from)? {
        if name.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
            continue;
        }
        if let Some(v) = fget_xattr(from, &name)? {
            fset_xattr(to, &name, &v)?;
        }
    }
    // Owner first: chown clears set-id bits, chmod then restores them.
    // SAFETY: fchown on an open fd with plain integer arguments.
    let r = unsafe { libc::fchown(to.as_raw_fd(), md.uid(), md.gid()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
    }
    // SAFETY: fchmod on an open fd with a plain mode.
    cvt(unsafe { libc::fchmod(to.as_raw_fd(), (md.mode() & 0o7777) as libc::mode_t) })?;
    let ts = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: ts is an array of two valid timespecs, as futimens requires.
    cvt(unsafe { libc::futimens(to.as_raw_fd(), ts.as_ptr()) })?;
    Ok(())
}

/// Whether the file at `path` (not following symlinks) is a blob.
pub fn is_blob_path(path: &Path) -> std::io::Result<bool> {
    Ok(lget_xattr(path, OsStr::new(STATE_XATTR))?.as_deref() == Some(STATE_BLOB))
}

/// Whether an open file is a blob.
pub fn is_blob_file(f: &File) -> std::io::Result<bool> {
    Ok(fget_xattr(f, OsStr::new(STATE_XATTR))?.as_deref() == Some(STATE_BLOB))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::xattr::lget_xattr;

    #[test]
    fn blob_marker_and_metadata_survive_prepare_commit() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backing::open(dir.path()).unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, b"NC06 but plaintext").unwrap();
        assert!(
            !is_blob_path(&target).unwrap(),
            "content never decides the state"
        );
        let src = File::open(&target).unwrap();
        fset_xattr(&src, "user.keep", b"v").unwrap();
        let tmp = b.prepare(b"blob", &src, true).unwrap();
        b.commit(tmp, &target).unwrap();
        assert!(is_blob_path(&target).unwrap());
        assert_eq!(
            lget_xattr(&target, OsStr::new("user.keep"))
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"blob");
        std::mem::forget(b.temp_file().unwrap());
        assert_eq!(b.clean_tmp().unwrap(), 1);
        assert!(b.plaintext_files().unwrap().is_empty());
    }
}
