//! Directories of the backing store, held by file descriptor: every entry is reached
//! by one plain name relative to its directory's fd, with the `*at` syscalls and
//! without following a symlink, in the manner of virtiofsd and libfuse's
//! passthrough_hp. The kernel never walks a path this module built, so a directory
//! swapped for a symlink (`RENAME_EXCHANGE`) cannot aim an operation outside BACKING.
//!
//! A directory below the root is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from the root's fd (one component at a time with `O_NOFOLLOW`
//! where the kernel lacks openat2), so a symlink anywhere on the way is refused.

use super::xattr::cvt;
use crate::error::{FsError, FsResult};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The `stat` of a backing entry, not following a symlink.
#[derive(Clone, Copy)]
pub struct Stat(libc::stat);

impl Stat {
    /// Device.
    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }
    /// Inode number in the backing filesystem.
    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }
    /// Type and permission bits.
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
    /// Hard links (`nlink_t` is 32 bits on 64-bit Arm, 64 on x86-64).
    pub fn nlink(&self) -> u64 {
        #[allow(clippy::useless_conversion)]
        u64::from(self.0.st_nlink)
    }
    /// Owner.
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    /// Group.
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    /// Device number (devices).
    pub fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.0.st_size.max(0) as u64
    }
    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Preferred I/O size.
    pub fn blksize(&self) -> u64 {
        self.0.st_blksize.max(0) as u64
    }
    /// 512-byte blocks allocated.
    pub fn blocks(&self) -> u64 {
        self.0.st_blocks.max(0) as u64
    }
    /// Access time, seconds and nanoseconds.
    pub fn atime(&self) -> (i64, i64) {
        (self.0.st_atime, self.0.st_atime_nsec)
    }
    /// Modification time.
    pub fn mtime(&self) -> (i64, i64) {
        (self.0.st_mtime, self.0.st_mtime_nsec)
    }
    /// Status change time.
    pub fn ctime(&self) -> (i64, i64) {
        (self.0.st_ctime, self.0.st_ctime_nsec)
    }
    fn kind(&self) -> libc::mode_t {
        self.0.st_mode & libc::S_IFMT
    }
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
    /// The `(dev, ino)` that identifies the backing file.
    pub fn id(&self) -> (u64, u64) {
        (self.dev(), self.ino())
    }

    /// The stat of an open file (any fd, `O_PATH` ones too).
    pub fn of_fd(fd: RawFd) -> io::Result<Stat> {
        // SAFETY: stat is plain data; fstat only writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is an open descriptor for the call and st a valid stat to fill.
        cvt(unsafe { libc::fstat(fd, &mut st) })?;
        Ok(Stat(st))
    }

    /// The stat of an open file.
    pub fn of(f: &impl AsRawFd) -> io::Result<Stat> {
        Stat::of_fd(f.as_raw_fd())
    }
}

/// `name` as a C string; EINVAL for a NUL inside.
fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Takes ownership of a descriptor a syscall just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: fd was just returned by a successful open and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `/proc/self/fd/N`: the path of an open fd, for the few syscalls that take no fd.
/// The kernel resolves it to exactly the object the fd holds (a symlink too), never
/// by walking names.
pub fn proc_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// A directory of the backing store, by `O_PATH` descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Its path, for messages only (never handed to a syscall).
    shown: PathBuf,
}

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;

impl Dir {
    /// Opens `path` (an absolute or working-directory path the caller trusts: the
    /// backing root, a CLI output directory) as a directory.
    pub fn open(path: &Path) -> FsResult<Dir> {
        let c = cname(path.as_os_str()).map_err(|e| FsError::io(path.display(), e))?;
        // SAFETY: c is a NUL-terminated path; the result is checked by owned().
        let fd = owned(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })
            .map_err(|e| FsError::io(path.display(), e))?;
        Ok(Dir {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// The directory `rel` below this one (`rel` empty: this one again), opened
    /// without following any symlink and without leaving this directory.
    pub fn sub(&self, rel: &Path) -> FsResult<Dir> {
        let shown = self.shown.join(rel);
        let err = |e| FsError::io(shown.display(), e);
        if rel.as_os_str().is_empty() {
            return Ok(Dir {
                fd: self.fd.try_clone().map_err(err)?,
                shown,
            });
        }
        let fd = match openat2_beneath(self.fd.as_raw_fd(), rel) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::ENAMETOOLONG)
                ) =>
            {
                self.walk(rel)
            }
            r => r,
        }
        .map_err(err)?;
        Ok(Dir { fd, shown })
    }

    /// [`Dir::sub`] one component at a time, each with `O_NOFOLLOW`: for kernels
    /// without openat2, and for paths longer than PATH_MAX.
    fn walk(&self, rel: &Path) -> io::Result<OwnedFd> {
        let mut fd = self.fd.try_clone()?;
        for c in rel.iter() {
            let name = cname(c)?;
            // SAFETY: fd is an open directory fd and name a NUL-terminated name.
            fd = owned(unsafe {
                libc::openat(fd.as_raw_fd(), name.as_ptr(), DIR_FLAGS | libc::O_NOFOLLOW)
            })?;
        }
        Ok(fd)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `DIR/name`, for messages.
    pub fn show(&self, name: &OsStr) -> String {
        if name == "." {
            self.shown.display().to_string()
        } else {
            self.shown.join(name).display().to_string()
        }
    }

    fn io(&self, name: &OsStr, e: io::Error) -> FsError {
        FsError::io(self.show(name), e)
    }

    /// Runs `f(dirfd, name)`, a `*at` syscall returning < 0 on failure.
    fn at(&self, name: &OsStr, f: impl FnOnce(RawFd, &CString) -> libc::c_int) -> FsResult<()> {
        let c = cname(name).map_err(|e| self.io(name, e))?;
        cvt(f(self.fd(), &c)).map_err(|e| self.io(name, e))
    }

    /// The stat of entry `name` itself (a symlink is not followed).
    pub fn stat(&self, name: &OsStr) -> FsResult<Stat> {
        // SAFETY: stat is plain data; fstatat only writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        self.at(name, |fd, c| {
            // SAFETY: fd is a directory fd, c a NUL-terminated name, st valid to write.
            unsafe { libc::fstatat(fd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }
        })?;
        Ok(Stat(st))
    }

    /// Opens entry `name` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`): a symlink is
    /// refused (ELOOP), never followed.
    pub fn open_file(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> FsResult<File> {
        let c = cname(name).map_err(|e| self.io(name, e))?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: the dir fd is open and c a NUL-terminated name; mode is plain data.
        let fd = owned(unsafe { libc::openat(self.fd(), c.as_ptr(), flags, mode) })
            .map_err(|e| self.io(name, e))?;
        Ok(File::from(fd))
    }

    /// Opens entry `name`, which must be a regular file, for reading (and writing, with
    /// `write`). The entry is first held by an `O_PATH` handle and checked, then
    /// reopened through that handle, so a FIFO or a device swapped in for the file is
    /// never opened (which could block the caller or act on the device) and a symlink
    /// is never followed.
    pub fn open_regular(&self, name: &OsStr, write: bool) -> FsResult<File> {
        let fd = self.open_path(name)?;
        let st = Stat::of(&fd).map_err(|e| self.io(name, e))?;
        self.reopen(name, &fd, &st, write)
    }

    /// Opens the file that `fd`, an `O_PATH` handle on entry `name` whose status is
    /// `st`, is a handle on: that inode, whatever is at the name by now. Refused
    /// unless it is a regular file.
    pub fn reopen(&self, name: &OsStr, fd: &OwnedFd, st: &Stat, write: bool) -> FsResult<File> {
        if !st.is_file() {
            let errno = if st.is_dir() {
                libc::EISDIR
            } else if st.is_symlink() {
                libc::ELOOP
            } else {
                libc::ENXIO
            };
            return Err(FsError::refused(
                errno,
                format!("{}: not a regular file", self.show(name)),
            ));
        }
        let p = cname(proc_path(fd.as_raw_fd()).as_os_str()).map_err(|e| self.io(name, e))?;
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
        // SAFETY: p is the NUL-terminated /proc path of an fd held open across the call;
        // the result is checked by owned().
        let f = owned(unsafe { libc::open(p.as_ptr(), flags) }).map_err(|e| self.io(name, e))?;
        Ok(File::from(f))
    }

    /// Opens entry `name` as an `O_PATH` handle on the entry itself (a symlink too).
    pub fn open_path(&self, name: &OsStr) -> FsResult<OwnedFd> {
        let c = cname(name).map_err(|e| self.io(name, e))?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: the dir fd is open and c a NUL-terminated name.
        owned(unsafe { libc::openat(self.fd(), c.as_ptr(), flags) }).map_err(|e| self.io(name, e))
    }

    /// Creates directory `name`.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> FsResult<()> {
        // SAFETY: fd is a directory fd and c a NUL-terminated name.
        self.at(name, |fd, c| unsafe {
            libc::mkdirat(fd, c.as_ptr(), mode as libc::mode_t)
        })
    }

    /// Creates special file `name` (FIFO, socket, device).
    pub fn mknod(&self, name: &OsStr, mode: u32, rdev: u64) -> FsResult<()> {
        // SAFETY: fd is a directory fd and c a NUL-terminated name.
        self.at(name, |fd, c| unsafe {
            libc::mknodat(fd, c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t)
        })
    }

    /// Creates symlink `name` pointing at `target` (which is only stored, never walked).
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> FsResult<()> {
        let t = cname(target).map_err(|e| self.io(name, e))?;
        // SAFETY: t and c are NUL-terminated; fd is a directory fd.
        self.at(name, |fd, c| unsafe {
            libc::symlinkat(t.as_ptr(), fd, c.as_ptr())
        })
    }

    /// The target of symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> FsResult<Vec<u8>> {
        let c = cname(name).map_err(|e| self.io(name, e))?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: buf is valid for its length; fd is a directory fd, c a C string.
        let n =
            unsafe { libc::readlinkat(self.fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(self.io(name, io::Error::last_os_error()));
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Removes non-directory `name` (or directory `name`, with `dir`).
    pub fn remove(&self, name: &OsStr, dir: bool) -> FsResult<()> {
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: fd is a directory fd and c a NUL-terminated name.
        self.at(name, |fd, c| unsafe {
            libc::unlinkat(fd, c.as_ptr(), flags)
        })
    }

    /// `renameat2(self/name, to/to_name, flags)`.
    pub fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr, flags: u32) -> FsResult<()> {
        let (a, b) = (cname(name), cname(to_name));
        let (Ok(a), Ok(b)) = (a, b) else {
            return Err(self.io(name, io::Error::from_raw_os_error(libc::EINVAL)));
        };
        // SAFETY: both fds are directory fds and both names NUL-terminated.
        cvt(unsafe { libc::renameat2(self.fd(), a.as_ptr(), to.fd(), b.as_ptr(), flags) }).map_err(
            |e| {
                FsError::io(
                    format!("rename {} -> {}", self.show(name), to.show(to_name)),
                    e,
                )
            },
        )
    }

    /// Makes `to/to_name` a hard link of `self/name` (a symlink is linked, not followed).
    pub fn link(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> FsResult<()> {
        let (a, b) = (cname(name), cname(to_name));
        let (Ok(a), Ok(b)) = (a, b) else {
            return Err(self.io(name, io::Error::from_raw_os_error(libc::EINVAL)));
        };
        // SAFETY: both fds are directory fds and both names NUL-terminated.
        cvt(unsafe { libc::linkat(self.fd(), a.as_ptr(), to.fd(), b.as_ptr(), 0) })
            .map_err(|e| to.io(to_name, e))
    }

    /// Changes the owner of entry `name` itself (`u32::MAX` leaves a field).
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> FsResult<()> {
        // SAFETY: fd is a directory fd and c a NUL-terminated name.
        self.at(name, |fd, c| unsafe {
            libc::fchownat(fd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })
    }

    /// Changes the mode of entry `name`, which must not be a symlink (Linux cannot
    /// chmod one; the kernel never asks). Through an `O_PATH` handle, so a symlink put
    /// in its place meanwhile is not followed.
    pub fn chmod(&self, name: &OsStr, mode: u32) -> FsResult<()> {
        let fd = self.open_path(name)?;
        let st = Stat::of(&fd).map_err(|e| self.io(name, e))?;
        if st.is_symlink() {
            return Err(self.io(name, io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        let p = cname(proc_path(fd.as_raw_fd()).as_os_str()).map_err(|e| self.io(name, e))?;
        // SAFETY: p is the NUL-terminated /proc path of an fd held open across the call.
        cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map_err(|e| self.io(name, e))
    }

    /// Sets the times of entry `name` itself (`UTIME_OMIT` leaves one).
    pub fn utimens(&self, name: &OsStr, ts: &[libc::timespec; 2]) -> FsResult<()> {
        // SAFETY: fd is a directory fd, c a NUL-terminated name, ts two timespecs.
        self.at(name, |fd, c| unsafe {
            libc::utimensat(fd, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        })
    }

    /// Flushes the directory's entries to disk.
    pub fn sync(&self) -> FsResult<()> {
        self.open_self()?
            .sync_all()
            .map_err(|e| self.io(OsStr::new("."), e))
    }

    /// Flushes the whole filesystem the directory is on (`syncfs(2)`).
    pub fn syncfs(&self) -> FsResult<()> {
        let d = self.open_self()?;
        // SAFETY: syncfs on an open directory fd.
        cvt(unsafe { libc::syncfs(d.as_raw_fd()) }).map_err(|e| self.io(OsStr::new("."), e))
    }

    /// The directory itself, open for reading.
    fn open_self(&self) -> FsResult<File> {
        self.open_file(OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
    }

    /// The names in the directory, without `.` and `..`.
    pub fn entries(&self) -> FsResult<Vec<OsString>> {
        let d = self.open_self()?;
        let path = proc_path(d.as_raw_fd());
        let mut out = Vec::new();
        for e in std::fs::read_dir(&path).map_err(|e| self.io(OsStr::new("."), e))? {
            let e = e.map_err(|e| self.io(OsStr::new("."), e))?;
            out.push(OsString::from_vec(e.file_name().into_vec()));
        }
        Ok(out)
    }
}

/// `openat2(dirfd, rel, O_PATH | O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`.
fn openat2_beneath(dirfd: RawFd, rel: &Path) -> io::Result<OwnedFd> {
    let c = cname(rel.as_os_str())?;
    // SAFETY: open_how is plain data (non-exhaustive: built by field, the rest zero).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = DIR_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `how` (of the size passed) and the NUL-terminated path;
    // the result is checked by owned().
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd as libc::c_int)
}
