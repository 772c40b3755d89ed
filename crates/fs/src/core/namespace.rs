//! Names: lookup and forget, creating and removing entries, links, renames, and
//! listing directories.

use super::handles::Handle;
use super::inode::{backing_id, noent};
use super::types::{Attr, DirEntry, Ino, Kind, ROOT_INO, STATUS_NAME};
use super::{cpath, Core};
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::{BPath, INTERNAL_DIR};
use crate::store::xattr::cvt;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Names at the root that belong to nacrithfs: the internal directory and the status file.
fn is_reserved(parent: Ino, name: &OsStr) -> bool {
    parent == ROOT_INO && (name == INTERNAL_DIR || name == STATUS_NAME)
}

/// One path component as the kernel sends it: never empty, `.`, `..` or with a `/`.
/// Checked anyway, so no request can make a backing path leave its parent.
pub(super) fn check_name(name: &OsStr) -> FsResult<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(FsError::refused(
            libc::EINVAL,
            format!("{name:?}: not a plain file name"),
        ));
    }
    Ok(())
}

/// A name that a new entry may take.
fn check_new_name(parent: Ino, name: &OsStr) -> FsResult<()> {
    check_name(name)?;
    if is_reserved(parent, name) {
        return Err(reserved(name));
    }
    if name.len() > 255 {
        return Err(FsError::refused(
            libc::ENAMETOOLONG,
            format!("{name:?}: name too long"),
        ));
    }
    Ok(())
}

fn reserved(name: &OsStr) -> FsError {
    FsError::refused(libc::EPERM, format!("{name:?}: name reserved by nacrithfs"))
}

/// Gives a new entry the caller's owner; a non-root daemon cannot, and keeps its own.
pub(super) fn chown_quiet(path: &Path, uid: u32, gid: u32) -> FsResult<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        Err(e) => Err(FsError::io(path.display(), e)),
    }
}

impl Core {
    /// Looks up `name` in `parent`, counting one kernel lookup of the result.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        if parent == ROOT_INO && name == STATUS_NAME {
            return Ok(self.status_attr());
        }
        if is_reserved(parent, name) {
            return Err(noent());
        }
        check_name(name)?;
        let (ino, path) = {
            let mut t = self.table();
            let path = self.path_of(&t, parent)?.join(name);
            let md = std::fs::symlink_metadata(&path).ctx(path.display())?;
            let ino = t.node_for(parent, name, &md);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
            (ino, path)
        };
        self.attr_at(ino, &path)
    }

    /// The kernel forgets `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO || ino == super::STATUS_INO {
            return;
        }
        let mut t = self.table();
        if let Some(node) = t.get_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        t.maybe_remove(ino);
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
            let mut t = self.table();
            let md = std::fs::symlink_metadata(path).ctx(path.display())?;
            let ino = t.node_for(parent, name, &md);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
            ino
        };
        self.attr_at(ino, path)
    }

    /// The backing path a new entry `name` in `parent` gets, checked.
    pub(super) fn new_entry(&self, parent: Ino, name: &OsStr) -> FsResult<BPath> {
        check_new_name(parent, name)?;
        Ok(self.path_of(&self.table(), parent)?.join(name))
    }

    /// Creates directory `name` in `parent`, owned by `uid:gid`.
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.new_entry(parent, name)?;
        std::fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&path)
            .ctx(path.display())?;
        self.created(parent, name, &path, uid, gid)
    }

    /// Creates a special file (FIFO, socket, device) `name` in `parent`.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.new_entry(parent, name)?;
        let c = cpath(&path)?;
        // SAFETY: c is a NUL-terminated path; mode and rdev are plain integers.
        cvt(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
            .ctx(path.display())?;
        self.created(parent, name, &path, uid, gid)
    }

    /// Creates symlink `name` in `parent`, pointing at `target`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.new_entry(parent, name)?;
        std::os::unix::fs::symlink(target, &path).ctx(path.display())?;
        self.created(parent, name, &path, uid, gid)
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let path = self.path_of(&self.table(), ino)?;
        Ok(std::fs::read_link(&path)
            .ctx(path.display())?
            .into_os_string()
            .into_encoded_bytes())
    }

    /// Makes `newname` in `newparent` a hard link of `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> FsResult<Attr> {
        check_new_name(newparent, newname)?;
        let dst = {
            let mut t = self.table();
            let src = self.path_of(&t, ino)?;
            let dst = self.path_of(&t, newparent)?.join(newname);
            std::fs::hard_link(&src, &dst).ctx(dst.display())?;
            t.add_link(ino, newparent, newname);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
            dst
        };
        self.attr_at(ino, &dst)
    }

    /// Removes the non-directory `name` from `parent`.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> FsResult<()> {
        if is_reserved(parent, name) {
            return Err(reserved(name));
        }
        check_name(name)?;
        let mut t = self.table();
        let path = self.path_of(&t, parent)?.join(name);
        let md = std::fs::symlink_metadata(&path).ctx(path.display())?;
        if dir {
            std::fs::remove_dir(&path).ctx(path.display())?;
        } else {
            std::fs::remove_file(&path).ctx(path.display())?;
        }
        t.drop_link(backing_id(&md), parent, name, md.nlink());
        Ok(())
    }

    /// Renames `name` in `parent` to `newname` in `newparent`, with `renameat2(2)`'s
    /// `RENAME_EXCHANGE` and `RENAME_NOREPLACE` flags.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if is_reserved(parent, name) {
            return Err(reserved(name));
        }
        if is_reserved(newparent, newname) {
            return Err(reserved(newname));
        }
        check_name(name)?;
        check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 {
            return Err(FsError::refused(
                libc::EINVAL,
                format!("rename flags {flags:#x} not supported"),
            ));
        }
        let mut t = self.table();
        let src = self.path_of(&t, parent)?.join(name);
        let dst = self.path_of(&t, newparent)?.join(newname);
        let smd = std::fs::symlink_metadata(&src).ctx(src.display())?;
        let dmd = std::fs::symlink_metadata(&dst).ok();
        let (cs, cd) = (cpath(&src)?, cpath(&dst)?);
        // SAFETY: cs and cd are NUL-terminated paths; AT_FDCWD is always valid.
        cvt(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cs.as_ptr(),
                libc::AT_FDCWD,
                cd.as_ptr(),
                flags,
            )
        })
        .ctx(format!("rename {} -> {}", src.display(), dst.display()))?;
        let sid = backing_id(&smd);
        let did = dmd.as_ref().map(backing_id);
        if did == Some(sid) {
            return Ok(()); // two links of one file: rename(2) does nothing
        }
        if exchange {
            t.relink(sid, (parent, name), (newparent, newname));
            if let Some(did) = did {
                // The destination node now sits at the source name.
                t.exchanged(did, (newparent, newname), (parent, name));
            }
            return Ok(());
        }
        if let (Some(did), Some(dmd)) = (did, dmd) {
            t.drop_link(did, newparent, newname, dmd.nlink());
        }
        t.relink(sid, (parent, name), (newparent, newname));
        Ok(())
    }

    /// Opens a directory: lists it now, for [`Core::readdir`] to page through.
    pub fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let path = self.path_of(&self.table(), ino)?;
        let mut entries = Vec::new();
        let parent = self
            .table()
            .get(ino)
            .and_then(|n| n.links.first().map(|l| l.0))
            .unwrap_or(ROOT_INO);
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
        for e in std::fs::read_dir(&path).ctx(path.display())? {
            let e = e.ctx(path.display())?;
            let name = e.file_name();
            if is_reserved(ino, &name) {
                continue;
            }
            let Ok(md) = e.metadata() else { continue }; // raced with a removal
            let child = self.table().node_for(ino, &name, &md);
            entries.push(DirEntry {
                ino: child,
                kind: Kind::of(&md),
                name,
            });
        }
        Ok(self.handles.insert(Handle::Dir { entries }))
    }

    /// Entries from `offset` on, each with the offset of the entry after it.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        self.handles.with(fh, |h| match h {
            Some(Handle::Dir { entries }) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(FsError::refused(
                libc::EBADF,
                format!("no open directory with handle {fh}"),
            )),
        })
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }
}
