//! The user's extended attributes; ours (`user.nacrithfs.*`) are hidden and refused.

use super::types::{Ino, STATUS_INO};
use super::Core;
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::{BPath, RESERVED_XATTR_PREFIX};
use crate::store::xattr::{lget_xattr, llist_xattr, lremove_xattr, lset_xattr};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(RESERVED_XATTR_PREFIX)
}

fn no_such(name: &OsStr) -> FsError {
    FsError::refused(libc::ENODATA, format!("no attribute {name:?}"))
}

impl Core {
    fn xattr_path(&self, ino: Ino) -> FsResult<BPath> {
        if ino == STATUS_INO {
            return Err(FsError::refused(
                libc::ENOTSUP,
                "no xattrs on the status file",
            ));
        }
        self.path_of(&self.table(), ino)
    }

    /// The value of attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        if reserved(name) {
            return Err(no_such(name));
        }
        let p = self.xattr_path(ino)?;
        lget_xattr(&p, name)
            .ctx(p.display())?
            .ok_or_else(|| no_such(name))
    }

    /// The names of the attributes, each NUL-terminated.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let p = self.xattr_path(ino)?;
        let mut out = Vec::new();
        for n in llist_xattr(&p).ctx(p.display())? {
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
        let p = self.xattr_path(ino)?;
        // Under the lock, ordered with content replacement (which copies xattrs).
        let mut t = self.table();
        t.meta_changed(ino);
        lset_xattr(&p, name, value, flags).ctx(p.display())
    }

    /// Removes attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> FsResult<()> {
        if reserved(name) {
            return Err(no_such(name));
        }
        let p = self.xattr_path(ino)?;
        lremove_xattr(&p, name).ctx(p.display())
    }
}
