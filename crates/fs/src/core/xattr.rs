//! The user's extended attributes; ours (`user.nacrithfs.*`) are hidden and refused.
//! Every change goes through the table lock and bumps the generation, because a
//! compression in flight copies the xattrs of the plaintext into its blob.

use super::types::{Ino, STATUS_INO};
use super::Core;
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::RESERVED_XATTR_PREFIX;
use crate::store::xattr::{get_at, list_at, remove_at, set_at};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

fn reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(RESERVED_XATTR_PREFIX)
}

fn no_such(name: &OsStr) -> FsError {
    FsError::refused(libc::ENODATA, format!("no attribute {name:?}"))
}

impl Core {
    /// An `O_PATH` handle on node `ino`'s backing entry, and its name for messages.
    fn xattr_handle(&self, ino: Ino) -> FsResult<(OwnedFd, String)> {
        if ino == STATUS_INO {
            return Err(FsError::refused(
                libc::ENOTSUP,
                "no xattrs on the status file",
            ));
        }
        let e = self.entry(&self.table(), ino)?;
        Ok((e.dir.open_path(&e.name)?, e.show()))
    }

    /// The value of attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        if reserved(name) {
            return Err(no_such(name));
        }
        let (fd, shown) = self.xattr_handle(ino)?;
        get_at(fd.as_raw_fd(), name)
            .ctx(shown)?
            .ok_or_else(|| no_such(name))
    }

    /// The names of the attributes, each NUL-terminated.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let (fd, shown) = self.xattr_handle(ino)?;
        let mut out = Vec::new();
        for n in list_at(fd.as_raw_fd()).ctx(shown)? {
            if !reserved(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets attribute `name`, with `setxattr(2)`'s flags.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        if reserved(name) {
            return Err(FsError::refused(
                libc::EPERM,
                format!("xattr name {name:?} reserved by nacrithfs"),
            ));
        }
        let (fd, shown) = self.xattr_handle(ino)?;
        // Under the lock, ordered with content replacement (which copies xattrs).
        let mut t = self.table();
        t.meta_changed(ino);
        set_at(fd.as_raw_fd(), name, value, flags).ctx(shown)
    }

    /// Removes attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> FsResult<()> {
        if reserved(name) {
            return Err(no_such(name));
        }
        let (fd, shown) = self.xattr_handle(ino)?;
        let mut t = self.table();
        t.meta_changed(ino);
        remove_at(fd.as_raw_fd(), name).ctx(shown)
    }
}
