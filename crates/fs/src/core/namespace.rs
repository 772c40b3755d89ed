//! Names: lookup and forget, creating and removing entries, links, renames, and
//! listing directories. Every backing syscall goes through the parent's directory
//! descriptor and one checked name; new entries are created as the caller.

use super::handles::Handle;
use super::inode::noent;
use super::types::{Attr, DirEntry, Ino, Kind, ROOT_INO, STATUS_INO, STATUS_NAME};
use super::{Core, Entry};
use crate::error::{FsError, FsResult};
use crate::store::backing::{is_blob_at, INTERNAL_DIR};
use crate::store::{Caller, Dir};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
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
        let (ino, entry) = {
            let mut t = self.table();
            let dir = self.dir_of(&t, parent)?;
            let st = dir.stat(name)?;
            let ino = t.node_for(parent, name, &st);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
            (
                ino,
                Entry {
                    dir,
                    name: name.to_owned(),
                },
            )
        };
        self.attr_at(ino, entry)
    }

    /// The kernel forgets `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO || ino == STATUS_INO {
            return;
        }
        let mut t = self.table();
        if let Some(node) = t.get_mut(ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        t.maybe_remove(ino);
    }

    /// Registers a just-created entry `dir/name` and counts the kernel's lookup.
    fn created(&self, parent: Ino, name: &OsStr, dir: Dir) -> FsResult<Attr> {
        let ino = {
            let mut t = self.table();
            let st = dir.stat(name)?;
            let ino = t.node_for(parent, name, &st);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
                n.fresh = true;
            }
            ino
        };
        self.attr_at(
            ino,
            Entry {
                dir,
                name: name.to_owned(),
            },
        )
    }

    /// The directory a new entry `name` in `parent` goes into, the name checked.
    pub(super) fn new_entry(&self, parent: Ino, name: &OsStr) -> FsResult<Dir> {
        check_new_name(parent, name)?;
        self.dir_of(&self.table(), parent)
    }

    /// Creates directory `name` in `parent`, as `caller`.
    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: &Caller) -> FsResult<Attr> {
        let dir = self.new_entry(parent, name)?;
        caller.act(|| dir.mkdir(name, mode & 0o7777))?;
        self.created(parent, name, dir)
    }

    /// Creates a special file (FIFO, socket, device) `name` in `parent`, as `caller`.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let dir = self.new_entry(parent, name)?;
        caller.act(|| dir.mknod(name, mode, rdev as u64))?;
        self.created(parent, name, dir)
    }

    /// Creates symlink `name` in `parent`, pointing at `target`, as `caller`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let dir = self.new_entry(parent, name)?;
        caller.act(|| dir.symlink(target.as_os_str(), name))?;
        self.created(parent, name, dir)
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let e = self.entry(&self.table(), ino)?;
        e.dir.readlink(&e.name)
    }

    /// Makes `newname` in `newparent` a hard link of `ino`. A compressed file becomes
    /// plaintext first (decoding it), so that a blob never has more than one link:
    /// blobs are replaced by renaming over their one name, which a second link would
    /// not follow.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> FsResult<Attr> {
        check_new_name(newparent, newname)?;
        let dst = loop {
            let mut t = self.table();
            let src = self.entry(&t, ino)?;
            // Checked under the table lock, which commits take too: no compression can
            // commit a blob between this check and the link.
            if is_blob_at(&src.dir, &src.name)? {
                drop(t);
                self.make_plain(ino)?;
                continue;
            }
            let ddir = self.dir_of(&t, newparent)?;
            src.dir.link(&src.name, &ddir, newname)?;
            t.add_link(ino, newparent, newname);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
            break Entry {
                dir: ddir,
                name: newname.to_owned(),
            };
        };
        self.attr_at(ino, dst)
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
        let d = self.dir_of(&t, parent)?;
        let st = d.stat(name)?;
        d.remove(name, dir)?;
        t.drop_link(st.id(), parent, name, st.nlink());
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
        let sdir = self.dir_of(&t, parent)?;
        let ddir = self.dir_of(&t, newparent)?;
        let smd = sdir.stat(name)?;
        let dmd = ddir.stat(newname).ok();
        sdir.rename(name, &ddir, newname, flags)?;
        let sid = smd.id();
        let did = dmd.as_ref().map(|m| m.id());
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
        let (dir, parent) = {
            let t = self.table();
            let parent = t
                .get(ino)
                .and_then(|n| n.links.first().map(|l| l.0))
                .unwrap_or(ROOT_INO);
            (self.dir_of(&t, ino)?, parent)
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for name in dir.entries()? {
            if is_reserved(ino, &name) {
                continue;
            }
            let Ok(st) = dir.stat(&name) else { continue }; // raced with a removal
            let child = self.table().node_for(ino, &name, &st);
            entries.push(DirEntry {
                ino: child,
                kind: Kind::of(&st),
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

    /// Flushes directory `ino`'s entries to disk (`fsyncdir`).
    pub fn fsyncdir(&self, ino: Ino) -> FsResult<()> {
        if ino == STATUS_INO {
            return Ok(());
        }
        let dir = self.dir_of(&self.table(), ino)?;
        dir.sync()
    }
}
