//! Attributes: getattr (a blob shows its original size, read from its header without
//! decoding), setattr, statfs.

use super::content::Content;
use super::inode::Table;
use super::lock;
use super::types::{timespec, to_time, Attr, Ino, Kind, SetAttr, Statfs, ROOT_INO, STATUS_INO};
use super::{Core, Entry};
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing;
use crate::store::xattr::cvt;
use crate::store::Stat;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Where a node's metadata is: its backing entry, or (unlinked) its open file.
pub(super) enum Target {
    Entry(Entry),
    Orphan(Arc<File>),
}

/// The one inode whose status and blob marker `getattr` reads.
enum Inode<'a> {
    /// At a name: an `O_PATH` handle on what was there.
    Named(&'a Entry, std::os::fd::OwnedFd),
    /// Open, unlinked.
    Open(&'a Arc<File>),
}

impl Core {
    /// For a node the kernel still knows but whose file is gone (unlinked, or replaced by
    /// a rename, while nothing held it open): ESTALE makes the kernel look the path up
    /// again, so an open racing with a rename over the file opens the new file instead
    /// of failing with ENOENT (found by tests/load.rs).
    pub(super) fn stale() -> FsError {
        FsError::refused(
            libc::ESTALE,
            "file replaced or removed since it was looked up",
        )
    }

    /// Where the metadata of `ino` is.
    pub(super) fn target(&self, t: &Table, ino: Ino) -> FsResult<Target> {
        let n = t.node(ino)?;
        if ino != ROOT_INO && n.is_orphan() {
            return match &n.content {
                Some(c) => Ok(Target::Orphan(c.file().clone())),
                None => Err(Self::stale()),
            };
        }
        Ok(Target::Entry(self.entry(t, ino)?))
    }

    pub(super) fn status_attr(&self) -> Attr {
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

    /// The attributes of `ino`, whose backing entry is `e`.
    pub(super) fn attr_at(&self, ino: Ino, e: Entry) -> FsResult<Attr> {
        self.attr_of(ino, &Target::Entry(e))
    }

    fn attr_of(&self, ino: Ino, target: &Target) -> FsResult<Attr> {
        // The status and the blob marker are read from one inode: a compression, a
        // fold or a truncate can rename another file over the name at any moment, and
        // a stat and a marker looked up by name apart could describe two files (the
        // raw length of a blob reported as a plaintext's size).
        let (md, inode) = match target {
            Target::Entry(e) => {
                let fd = e.dir.open_path(&e.name)?;
                (Stat::of(&fd).ctx(e.show())?, Inode::Named(e, fd))
            }
            Target::Orphan(f) => (Stat::of(f.as_ref()).ctx("fstat")?, Inode::Open(f)),
        };
        let mut size = md.len();
        // An open blob's size is its overlay's (replaying the log from the file at
        // every getattr after a write would read all of it).
        let open_blob = match self.table().get(ino).and_then(|n| n.content.as_ref()) {
            Some(Content::Blob { overlay, .. }) => Some(overlay.clone()),
            _ => None,
        };
        if let Some(overlay) = open_blob {
            let live = lock(&overlay);
            if !live.retired {
                return Ok(Self::attr_from(ino, &md, live.overlay.size()));
            }
        }
        if !md.is_file() {
            return Ok(Self::attr_from(ino, &md, size));
        }
        let (f, name) = match inode {
            Inode::Named(e, fd) => {
                if !backing::is_blob_fd(&fd, &md).ctx(e.show())? {
                    return Ok(Self::attr_from(ino, &md, size));
                }
                (Arc::new(e.dir.reopen(&e.name, &fd, &md, false)?), e.show())
            }
            Inode::Open(f) => {
                if !backing::is_blob_file(f).ctx("fgetxattr")? {
                    return Ok(Self::attr_from(ino, &md, size));
                }
                (f.clone(), "(unlinked file)".to_string())
            }
        };
        // A blob whose header is unreadable keeps its stored size, so it can still be
        // looked up, renamed, replaced and removed; reads of it fail.
        match self.blobs.size(&*self.codec, &f, &md, &name) {
            Ok(len) => size = len,
            Err(e) => log::warn!("{}", e.report()),
        }
        Ok(Self::attr_from(ino, &md, size))
    }

    pub(super) fn attr_from(ino: Ino, md: &Stat, size: u64) -> Attr {
        Attr {
            ino,
            size,
            blocks: md.blocks(),
            atime: to_time(md.atime()),
            mtime: to_time(md.mtime()),
            ctime: to_time(md.ctime()),
            kind: Kind::of(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
        }
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        if ino == STATUS_INO {
            return Ok(self.status_attr());
        }
        let target = self.target(&self.table(), ino)?;
        self.attr_of(ino, &target)
    }

    /// Changes size, mode, owner and times; returns the new attributes.
    pub fn setattr(&self, ino: Ino, a: &SetAttr) -> FsResult<Attr> {
        if ino == STATUS_INO {
            return Err(FsError::refused(
                libc::EPERM,
                "the status file is read-only",
            ));
        }
        if let Some(size) = a.size {
            let _writer = Writer::start(self, ino);
            self.truncate(ino, size)?;
        }
        let mut t = self.table();
        let target = self.target(&t, ino)?;
        t.meta_changed(ino); // a compression in flight would copy stale metadata
        if let Some(n) = t.get_mut(ino) {
            if a.size.is_some() {
                n.let_go_if_closed();
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            let (u, g) = (a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX));
            match &target {
                Target::Entry(e) => e.dir.chown(&e.name, u, g)?,
                // SAFETY: fchownat of an open fd with an empty path and AT_EMPTY_PATH.
                Target::Orphan(f) => cvt(unsafe {
                    libc::fchownat(
                        f.as_raw_fd(),
                        CString::default().as_ptr(),
                        u,
                        g,
                        libc::AT_EMPTY_PATH,
                    )
                })
                .ctx("fchown")?,
            }
        }
        if let Some(mode) = a.mode {
            let mode = mode & 0o7777;
            match &target {
                // Linux cannot chmod a symlink itself; the kernel never asks.
                Target::Entry(e) => e.dir.chmod(&e.name, mode)?,
                Target::Orphan(f) => {
                    // SAFETY: fchmod of an open fd.
                    cvt(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) })
                        .ctx("fchmod")?
                }
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = [timespec(a.atime), timespec(a.mtime)];
            match &target {
                Target::Entry(e) => e.dir.utimens(&e.name, &ts)?,
                Target::Orphan(f) => {
                    // SAFETY: futimens of an open fd with an array of two timespecs.
                    cvt(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).ctx("futimens")?
                }
            }
        }
        let queue = a.size.is_some() && t.get(ino).is_some_and(|n| n.wants_compression());
        drop(t);
        if queue {
            self.queue.push_settled(ino, self.settle);
        }
        self.attr_of(ino, &target)
    }

    /// Statistics of the backing filesystem.
    pub fn statfs(&self) -> FsResult<Statfs> {
        // SAFETY: statvfs is plain old data, filled in by the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the root's fd is open and s a valid statvfs to write.
        cvt(unsafe { libc::fstatvfs(self.backing.root_dir().fd(), &mut s) })
            .ctx(self.backing.root().display())?;
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
}

/// A change made without a handle (a truncate by path) counts as a writer while it
/// runs, as a handle's write does: a compression that read the file before the change
/// is done cannot commit over it (the change marks the file modified when it starts,
/// and a compression that took that mark would otherwise look unchanged). The last
/// writer's end queues the file, here `setattr`.
struct Writer<'a> {
    core: &'a Core,
    ino: Ino,
}

impl<'a> Writer<'a> {
    fn start(core: &'a Core, ino: Ino) -> Writer<'a> {
        if let Some(n) = core.table().get_mut(ino) {
            n.writers += 1;
        }
        Writer { core, ino }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.core.table().get_mut(self.ino) {
            n.writers = n.writers.saturating_sub(1);
        }
    }
}
