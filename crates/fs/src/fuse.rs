//! The thin fuser adapter: translates FUSE requests into [`Core`] calls and results
//! into replies. No filesystem logic lives here.

use crate::core::{Allocate, Attr, Core, Kind, OpenReply, SetAttr, SetTime};
use crate::error::FsError;
use crate::store::Caller;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may cache entries and attributes.
const TTL: Duration = Duration::from_secs(1);

/// The `fuser::Filesystem` over a [`Core`].
pub struct NacrithFuse {
    core: Arc<Core>,
}

impl NacrithFuse {
    /// An adapter serving `core`.
    pub fn new(core: Arc<Core>) -> Self {
        NacrithFuse { core }
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Logs `e` at the level chosen where it was made, and gives its errno.
fn errno(op: &str, e: &FsError) -> Errno {
    log::log!(e.level(), "{op}: {}", e.report());
    Errno::from_i32(e.errno())
}

/// Who sent the request: new entries are created as this user.
fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

fn reply_entry(op: &str, r: Result<Attr, FsError>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn reply_empty(op: &str, r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn reply_xattr(op: &str, r: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn fopen(r: OpenReply) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if r.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if r.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

impl Filesystem for NacrithFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open, so truncating a compressed file never decodes it.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            log::info!("kernel lacks FUSE_ATOMIC_O_TRUNC");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        log::debug!("lookup({parent}, {name:?})");
        reply_entry("lookup", self.core.lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        log::debug!("forget({ino}, {nlookup})");
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        log::debug!("getattr({ino})");
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        log::debug!("setattr({ino}, mode {mode:?}, uid {uid:?}, gid {gid:?}, size {size:?})");
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
        };
        match self.core.setattr(ino.0, &a) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        log::debug!("readlink({ino})");
        match self.core.readlink(ino.0) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mknod({parent}, {name:?}, {mode:o})");
        reply_entry(
            "mknod",
            self.core.mknod(parent.0, name, mode, rdev, &caller(req)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        log::debug!("mkdir({parent}, {name:?}, {mode:o})");
        reply_entry(
            "mkdir",
            self.core.mkdir(parent.0, name, mode, &caller(req)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("unlink({parent}, {name:?})");
        reply_empty("unlink", self.core.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("rmdir({parent}, {name:?})");
        reply_empty("rmdir", self.core.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        log::debug!("symlink({parent}, {link_name:?} -> {target:?})");
        reply_entry(
            "symlink",
            self.core.symlink(parent.0, link_name, target, &caller(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        log::debug!("rename({parent}, {name:?} -> {newparent}, {newname:?}, {flags})");
        reply_empty(
            "rename",
            self.core
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        log::debug!("link({ino} -> {newparent}, {newname:?})");
        reply_entry("link", self.core.link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("open({ino}, {:#x})", flags.0);
        match self.core.open(ino.0, flags.0) {
            Ok((fh, r)) => reply.opened(FileHandle(fh), fopen(r)),
            Err(e) => reply.error(errno("open", &e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        log::debug!("lseek({ino}, fh {}, {offset}, {whence})", fh.0);
        // The kernel asks only for SEEK_DATA and SEEK_HOLE; it does the others itself.
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.core.seek(fh.0, offset, hole) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno("lseek", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        log::debug!("read({ino}, fh {}, {offset}, {size})", fh.0);
        match self.core.read(fh.0, offset, size) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno("read", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        log::debug!("write({ino}, fh {}, {offset}, {})", fh.0, data.len());
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        log::debug!(
            "fallocate({ino}, fh {}, {offset}, {length}, {mode:#x})",
            fh.0
        );
        let r =
            Allocate::from_mode(mode).and_then(|a| self.core.fallocate(fh.0, offset, length, a));
        reply_empty("fallocate", r, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("release({ino}, fh {})", fh.0);
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("fsync({ino}, fh {})", fh.0);
        reply_empty("fsync", self.core.fsync(fh.0, datasync), reply);
    }

    /// No file here is a device, and the backing file's own flags (chattr) are not the
    /// mount's to show: every ioctl is "not a terminal", as a regular file on most
    /// filesystems answers isatty(3). Said here so that fuser does not log a warning
    /// each time an editor or git asks.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        log::debug!("ioctl({ino}, fh {}, {cmd:#x})", fh.0);
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        log::debug!("opendir({ino})");
        match self.core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        log::debug!("readdir({ino}, fh {}, {offset})", fh.0);
        match self.core.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.ino), next, kind(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        log::debug!("fsyncdir({ino})");
        reply_empty("fsyncdir", self.core.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        log::debug!("setxattr({ino}, {name:?})");
        reply_empty(
            "setxattr",
            self.core.setxattr(ino.0, name, value, flags),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        log::debug!("getxattr({ino}, {name:?})");
        reply_xattr("getxattr", self.core.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        log::debug!("listxattr({ino})");
        reply_xattr("listxattr", self.core.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        log::debug!("removexattr({ino}, {name:?})");
        reply_empty("removexattr", self.core.removexattr(ino.0, name), reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        log::debug!("create({parent}, {name:?}, {mode:o}, {flags:#x})");
        match self.core.create(parent.0, name, mode, flags, &caller(req)) {
            Ok((a, fh, r)) => {
                reply.created(&TTL, &attr(&a), Generation(0), FileHandle(fh), fopen(r))
            }
            Err(e) => reply.error(errno("create", &e)),
        }
    }
}
