//! The backing directory: where each file lives, how a blob is told from plaintext,
//! atomic replacement of a file's content, the lock that gives BACKING to one daemon,
//! and start-up recovery.
//!
//! Layout: `MNT/a/b.txt` is `BACKING/a/b.txt`. A regular file is either plaintext or an
//! NC06 blob; blobs carry the xattr `user.nacrithfs.state=nc06`, set on the temporary
//! file before it is renamed into place, so the marker and the content change in one
//! atomic `rename(2)`. A file without the marker is plaintext, whatever its first bytes
//! are (a plaintext file that starts with "NC06" is never mistaken for a blob, and files
//! put into BACKING by other tools are simply plaintext, compressed at the next mount).
//!
//! Internal state lives in `BACKING/.nacrithfs/`, a real directory of mode 0700 (a
//! symlink there is refused): `lock` (held by the daemon), `tmp/` with temporary files
//! being written (a crash leaves at most some of them, deleted at the next mount), and
//! `status.json` the daemon's last published counters. Every content change is one
//! `rename(2)` of a complete, fsynced temporary file over the target, so there is no
//! multi-step operation to journal: after a crash each file is either its old or its new
//! content, never both or neither.
//!
//! Every access goes through a directory descriptor ([`Dir`]), never through a path
//! the kernel walks again.

use super::atomic::AtomicFile;
use super::dir::{proc_path, Dir, Stat};
use super::xattr::{cvt, fget_xattr, flist_xattr, fset_xattr, lget_xattr};
use crate::error::{FsError, FsResult, IoContext};
use log::Level;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Name of the internal directory at the root of BACKING (hidden from the mount).
pub const INTERNAL_DIR: &str = ".nacrithfs";
/// The xattr that marks a blob.
pub const STATE_XATTR: &str = "user.nacrithfs.state";
/// Value of [`STATE_XATTR`] on a blob.
pub const STATE_BLOB: &[u8] = b"nc06";
/// Value of [`STATE_XATTR`] on a blob followed by an overlay log of changes made
/// since (`core/overlay.rs`): still compressed, but due for compressing again.
pub const STATE_BLOB_LOG: &[u8] = b"nc06+log";

/// Whether a [`STATE_XATTR`] value marks a blob (with or without a log).
fn blob_state(v: Option<&[u8]>) -> bool {
    v == Some(STATE_BLOB) || v == Some(STATE_BLOB_LOG)
}
/// Prefix of every xattr name reserved for nacrithfs (hidden from the mount).
pub const RESERVED_XATTR_PREFIX: &[u8] = b"user.nacrithfs.";
/// Start of [`STATE_XATTR`]'s value on plaintext that compression would not make
/// smaller: `plain:SIZE:MTIME_NS` of the file then, so that it is not queued again
/// until it changes (a file changed by another tool no longer matches).
pub const STATE_PLAIN: &[u8] = b"plain:";

/// The [`STATE_PLAIN`] value for a file of this size and modification time.
fn plain_value(st: &Stat) -> Vec<u8> {
    let (s, ns) = st.mtime();
    format!(
        "plain:{}:{}",
        st.len(),
        s as i128 * 1_000_000_000 + ns as i128
    )
    .into_bytes()
}

/// Marks the plaintext file `f` as kept plain (compression would not shrink it).
pub fn mark_plain(f: &File) -> FsResult<()> {
    let st = Stat::of(f).ctx("fstat")?;
    fset_xattr(f, STATE_XATTR, &plain_value(&st)).ctx("fsetxattr")
}

/// Whether the file `fd` holds (an `O_PATH` handle, or any fd) is plaintext marked as
/// kept plain, unchanged since it was marked.
fn kept_plain(fd: std::os::fd::RawFd, st: &Stat) -> std::io::Result<bool> {
    Ok(super::xattr::get_at(fd, OsStr::new(STATE_XATTR))?.is_some_and(|v| v == plain_value(st)))
}

/// The backing directory of one mount.
#[derive(Debug)]
pub struct Backing {
    root_path: PathBuf,
    root: Dir,
    internal: Dir,
    tmp: Arc<Dir>,
}

/// Prefix of the daemon's temporary files in `.nacrithfs/tmp`: none, so they are
/// `PID-N.tmp` (pack's shards use their own prefixes in the same directory).
const TMP_PREFIX: &str = "";

/// Creates directory `name` in `dir` (mode 0700) if it is not there, and checks that
/// it is a real directory, not a symlink, owned by us, and private.
fn private_dir(dir: &Dir, name: &str) -> FsResult<Dir> {
    let name = OsStr::new(name);
    match dir.mkdir(name, 0o700) {
        Ok(()) => {}
        Err(e) if e.errno() == libc::EEXIST => {}
        Err(e) => return Err(e),
    }
    let st = dir.stat(name)?;
    if !st.is_dir() {
        return Err(FsError::new(
            libc::ENOTDIR,
            Level::Error,
            format!(
                "{} is not a directory{}: refusing to keep plaintext there",
                dir.show(name),
                if st.is_symlink() { " (a symlink)" } else { "" }
            ),
        ));
    }
    // SAFETY: geteuid takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    if st.uid() != me {
        return Err(FsError::new(
            libc::EPERM,
            Level::Error,
            format!(
                "{} belongs to uid {}, not to this daemon (uid {me})",
                dir.show(name),
                st.uid()
            ),
        ));
    }
    if st.mode() & 0o077 != 0 {
        dir.chmod(name, 0o700)?;
    }
    dir.sub(Path::new(name))
}

/// Who may use a backing directory: one daemon alone, or any number of pack shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// The mount: nothing else may write BACKING.
    Exclusive,
    /// A pack, unpack or verify shard: others may run beside it, a mount may not.
    Shared,
}

/// A held lock on a backing directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct BackingLock {
    file: File,
    mode: LockMode,
}

impl Drop for BackingLock {
    fn drop(&mut self) {
        if self.mode == LockMode::Exclusive {
            let _ = self.file.set_len(0); // no holder's pid left behind
        }
    }
}

impl Backing {
    /// Opens `root` as a backing directory, creating the internal directories.
    pub fn open(root: &Path) -> FsResult<Backing> {
        let root_path = root.canonicalize().ctx(root.display())?;
        let root = Dir::open(&root_path)?;
        let internal = private_dir(&root, INTERNAL_DIR)?;
        let tmp = Arc::new(private_dir(&internal, "tmp")?);
        Ok(Backing {
            root_path,
            root,
            internal,
            tmp,
        })
    }

    /// Takes `.nacrithfs/lock` with `flock(2)`, without waiting. A daemon that finds it
    /// held gets EBUSY with the holder's pid (which the exclusive holder writes there).
    pub fn lock(&self, mode: LockMode) -> FsResult<BackingLock> {
        let name = OsStr::new("lock");
        let f = self
            .internal
            .open_file(name, libc::O_RDWR | libc::O_CREAT, 0o600)?;
        let op = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        };
        // SAFETY: flock on an open fd with plain flags.
        if let Err(e) = cvt(unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) }) {
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(FsError::io(self.internal.show(name), e));
            }
            let mut pid = String::new();
            let _ = (&f).read_to_string(&mut pid);
            let holder = match pid.trim().parse::<u32>() {
                Ok(p) if Path::new(&format!("/proc/{p}")).exists() => {
                    format!("the nacrithfs daemon with pid {p}")
                }
                _ => "another nacrithfs process (pack, unpack or verify)".to_string(),
            };
            return Err(FsError::new(
                libc::EBUSY,
                Level::Error,
                format!("{} is in use by {holder}", self.root_path.display()),
            ));
        }
        if mode == LockMode::Exclusive {
            let _ = f.set_len(0);
            let _ = (&f).write_all(format!("{}\n", std::process::id()).as_bytes());
        }
        Ok(BackingLock { file: f, mode })
    }

    /// The backing directory (canonical), for messages.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// The backing root's directory descriptor.
    pub fn root_dir(&self) -> &Dir {
        &self.root
    }

    /// The absolute backing path of a path relative to the mount root, for messages
    /// (never handed to a syscall).
    pub fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root_path.clone()
        } else {
            self.root_path.join(rel)
        }
    }

    /// The directory `rel` (relative to the mount root), opened beneath the root
    /// without following any symlink.
    pub fn dir(&self, rel: &Path) -> FsResult<Dir> {
        self.root.sub(rel)
    }

    /// Deletes leftovers of interrupted writes: every temporary file. Returns how many.
    pub fn clean_tmp(&self) -> FsResult<usize> {
        let mut n = 0;
        for name in self.tmp.entries()? {
            let r = match self.tmp.stat(&name) {
                Ok(st) if st.is_dir() => {
                    let p = proc_path(self.tmp.fd()).join(&name);
                    std::fs::remove_dir_all(p).ctx(self.tmp.show(&name))
                }
                _ => self.tmp.remove(&name, false),
            };
            match r {
                Ok(()) => n += 1,
                Err(e) => log::warn!("recovery: {}", e.report()),
            }
        }
        Ok(n)
    }

    /// Every regular plaintext file under the root (relative paths), skipping the
    /// internal directory: the files a previous session left to compress. An entry
    /// that cannot be read is logged and skipped; the rest are still found.
    pub fn plaintext_files(&self) -> FsResult<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let listed = self.dir(&rel).and_then(|d| Ok((d.entries()?, d)));
            let (names, dir) = match listed {
                Ok(x) => x,
                Err(e) => {
                    log::warn!(
                        "recovery: cannot list {}: {}",
                        self.path(&rel).display(),
                        e.report()
                    );
                    continue;
                }
            };
            for name in names {
                if rel.as_os_str().is_empty() && name == INTERNAL_DIR {
                    continue;
                }
                let child = rel.join(&name);
                let st = match dir.stat(&name) {
                    Ok(st) => st,
                    Err(e) => {
                        log::warn!("recovery: skipping {}", e.report());
                        continue;
                    }
                };
                if st.is_dir() {
                    stack.push(child);
                } else if st.is_file() {
                    match needs_compressing(&dir, &name) {
                        Ok(true) => out.push(child),
                        Ok(false) => {}
                        Err(e) => log::warn!("recovery: skipping {}", e.report()),
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates a new temporary file under `.nacrithfs/tmp`.
    pub fn temp_file(&self) -> FsResult<AtomicFile> {
        AtomicFile::create_at(&self.tmp, TMP_PREFIX)
    }

    /// Writes `data` to a new temporary file with the metadata of `like` (mode, owner,
    /// times, user xattrs) and, for a blob, the blob marker; fsyncs it. The caller
    /// renames it into place with [`Backing::commit`], or drops it.
    pub fn prepare(&self, data: &[u8], like: &File, blob: bool) -> FsResult<AtomicFile> {
        self.prepare_with(like, blob, |f| f.write_all(data))
    }

    /// [`Backing::prepare`] with the content written by `fill`, piece by piece.
    pub fn prepare_with(
        &self,
        like: &File,
        blob: bool,
        fill: impl FnOnce(&mut AtomicFile) -> FsResult<()>,
    ) -> FsResult<AtomicFile> {
        let mut f = self.temp_file()?;
        fill(&mut f)?;
        seal(&mut f, like, blob)?;
        Ok(f)
    }

    /// Gives a temporary file whose content is written the metadata of `like` and,
    /// for a blob, the marker, and fsyncs it: [`Backing::prepare`] after the fact.
    pub fn seal(&self, f: &mut AtomicFile, like: &File, blob: bool) -> FsResult<()> {
        seal(f, like, blob)
    }

    /// Renames a prepared temporary file over `dir/name` and syncs the directory.
    pub fn commit(&self, tmp: AtomicFile, dir: &Dir, name: &OsStr) -> FsResult<File> {
        let shown = dir.show(name);
        tmp.commit_at(dir, name, |point| fault_pause(point, &shown))
    }

    /// Publishes `json` as `.nacrithfs/status.json` (atomically).
    pub fn publish_status(&self, json: &str) {
        let r = self.temp_file().and_then(|mut f| {
            f.write_all(json.as_bytes())?;
            f.commit_at(&self.internal, OsStr::new("status.json"), |_| {})
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
    f.write_all(data)?;
    seal(f, like, blob)
}

/// The metadata, marker and fsync of [`stage`], after the content (written a piece at
/// a time).
pub fn seal(f: &mut AtomicFile, like: &File, blob: bool) -> FsResult<()> {
    copy_metadata(like, f.file()).ctx(f.name())?;
    if blob {
        fset_xattr(f.file(), STATE_XATTR, STATE_BLOB).ctx(f.name())?;
    }
    f.sync()
}

/// Crash-test hook: with `NACRITHFS_FAULT=POINT:MS` in the daemon's environment, every
/// [`Backing::commit`] sleeps MS milliseconds at POINT (`before-rename`: the temporary
/// file is complete and synced, the target unchanged; `after-rename`: the target is
/// replaced, the directory not yet synced, the inode table not yet updated) after
/// logging it, so tests/crash.rs can kill -9 the daemon exactly there. Unset, as always
/// outside those tests, it costs one initialised `OnceLock` read per commit.
fn fault_pause(point: &str, target: &str) {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("NACRITHFS_FAULT").ok()?;
        let (p, ms) = v.split_once(':')?;
        Some((p.to_owned(), ms.parse().ok()?))
    });
    if let Some((p, ms)) = spec {
        if p == point {
            log::warn!("NACRITHFS_FAULT: pausing {ms} ms {point} of {target}");
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}

/// Copies owner, the user's xattrs (not the reserved `user.nacrithfs.*` ones), mode,
/// and access/modification times, in that order: chown clears set-id bits and
/// `security.capability`, so both are set after it.
pub fn copy_metadata(from: &File, to: &File) -> std::io::Result<()> {
    let md = from.metadata()?;
    // SAFETY: fchown on an open fd with plain integer arguments.
    let r = unsafe { libc::fchown(to.as_raw_fd(), md.uid(), md.gid()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
    }
    for name in flist_xattr(from)? {
        if name.as_bytes().starts_with(RESERVED_XATTR_PREFIX) {
            continue;
        }
        if let Some(v) = fget_xattr(from, &name)? {
            fset_xattr(to, &name, &v)?;
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

/// Whether regular file `name` of `dir` is plaintext still to compress: neither a blob
/// nor kept plain since it last changed.
fn needs_compressing(dir: &Dir, name: &OsStr) -> FsResult<bool> {
    let fd = dir.open_path(name)?;
    let st = Stat::of(&fd).ctx(dir.show(name))?;
    let state =
        super::xattr::get_at(fd.as_raw_fd(), OsStr::new(STATE_XATTR)).ctx(dir.show(name))?;
    Ok(match state {
        Some(v) if v == STATE_BLOB => false,
        Some(v) if v == STATE_BLOB_LOG => true,
        Some(_) => !kept_plain(fd.as_raw_fd(), &st).ctx(dir.show(name))?,
        None => true,
    })
}

/// Whether an open plaintext file is marked kept plain and unchanged since.
pub fn is_kept_plain(f: &File) -> FsResult<bool> {
    let st = Stat::of(f).ctx("fstat")?;
    kept_plain(f.as_raw_fd(), &st).ctx("fgetxattr")
}

/// Whether entry `name` of `dir` is a blob (read through an `O_PATH` handle: the entry
/// is not opened, and a symlink is not followed).
pub fn is_blob_at(dir: &Dir, name: &OsStr) -> FsResult<bool> {
    let fd = dir.open_path(name)?;
    let st = Stat::of(&fd).ctx(dir.show(name))?;
    is_blob_fd(&fd, &st).ctx(dir.show(name))
}

/// Whether the inode `fd` (an `O_PATH` handle; its status `st`) is a blob.
pub fn is_blob_fd(fd: &OwnedFd, st: &Stat) -> std::io::Result<bool> {
    if !st.is_file() {
        return Ok(false);
    }
    Ok(blob_state(
        super::xattr::get_at(fd.as_raw_fd(), OsStr::new(STATE_XATTR))?.as_deref(),
    ))
}

/// Whether the file at `path` (not following symlinks) is a blob. For tools and tests
/// that look at BACKING from outside.
pub fn is_blob_path(path: &Path) -> std::io::Result<bool> {
    Ok(blob_state(
        lget_xattr(path, OsStr::new(STATE_XATTR))?.as_deref(),
    ))
}

/// Whether the file at `path` (not following symlinks) is plaintext marked as kept
/// plain (compression would not shrink it). For tools and tests that look at BACKING.
pub fn is_kept_plain_path(path: &Path) -> std::io::Result<bool> {
    Ok(lget_xattr(path, OsStr::new(STATE_XATTR))?.is_some_and(|v| v.starts_with(STATE_PLAIN)))
}

/// Whether an open file is a blob (with or without an overlay log).
pub fn is_blob_file(f: &File) -> std::io::Result<bool> {
    Ok(blob_state(
        fget_xattr(f, OsStr::new(STATE_XATTR))?.as_deref(),
    ))
}

/// Whether an open file is a blob marked as followed by an overlay log.
pub fn is_logged_file(f: &File) -> std::io::Result<bool> {
    Ok(fget_xattr(f, OsStr::new(STATE_XATTR))?.as_deref() == Some(STATE_BLOB_LOG))
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
        b.commit(tmp, b.root_dir(), OsStr::new("f")).unwrap();
        assert!(is_blob_path(&target).unwrap());
        assert!(is_blob_at(b.root_dir(), OsStr::new("f")).unwrap());
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

    #[test]
    fn the_internal_directory_must_be_real_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(INTERNAL_DIR)).unwrap();
        let e = Backing::open(dir.path()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTDIR, "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        std::fs::remove_file(dir.path().join(INTERNAL_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(INTERNAL_DIR)).unwrap();
        std::fs::set_permissions(
            dir.path().join(INTERNAL_DIR),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        Backing::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(INTERNAL_DIR))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn one_exclusive_holder_or_many_shared() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backing::open(dir.path()).unwrap();
        let held = b.lock(LockMode::Exclusive).unwrap();
        let e = b.lock(LockMode::Exclusive).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert_eq!(b.lock(LockMode::Shared).unwrap_err().errno(), libc::EBUSY);
        drop(held);
        let s1 = b.lock(LockMode::Shared).unwrap();
        let _s2 = b.lock(LockMode::Shared).unwrap();
        assert_eq!(
            b.lock(LockMode::Exclusive).unwrap_err().errno(),
            libc::EBUSY
        );
        drop(s1);
    }
}
