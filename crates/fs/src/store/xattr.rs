//! Extended attributes through raw syscalls, by path (never following a symlink) or by
//! open file. Thin wrappers that keep the OS error, so the callers' errnos are exact.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// `r` as an `io::Result`: the OS error when it is negative.
pub(crate) fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `p` as a C string (EINVAL if it holds a NUL).
pub(crate) fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP))
}

/// Reads an xattr with a size probe; `None` when it does not exist. `call(buf, len)`
/// is one of the `*getxattr`/`*listxattr` syscalls, which write at most `len` bytes.
fn get_with(
    mut call: impl FnMut(*mut libc::c_void, usize) -> isize,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            let e = io::Error::last_os_error();
            return if absent(&e) { Ok(None) } else { Err(e) };
        }
        let mut buf = vec![0u8; n as usize];
        let m = call(buf.as_mut_ptr().cast(), buf.len());
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew between the two calls
            }
            return if absent(&e) { Ok(None) } else { Err(e) };
        }
        buf.truncate(m as usize);
        return Ok(Some(buf));
    }
}

/// The xattr `name` of the entry at `path` itself (a symlink is not followed).
pub fn lget_xattr(path: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let (p, n) = (cstr(path.as_os_str())?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated and outlive the call; buf is either null with
    // len 0 (a size probe) or valid for len bytes (get_with's contract).
    get_with(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len) })
}

/// The xattr `name` of an open file.
pub fn fget_xattr(f: &File, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let n = cstr(name)?;
    // SAFETY: the fd is open for the call, n is NUL-terminated, and buf/len follow
    // get_with's contract.
    get_with(|buf, len| unsafe { libc::fgetxattr(f.as_raw_fd(), n.as_ptr(), buf, len) })
}

/// Sets the xattr `name` of an open file.
pub fn fset_xattr(f: &File, name: impl AsRef<OsStr>, value: &[u8]) -> io::Result<()> {
    let n = cstr(name.as_ref())?;
    // SAFETY: the fd is open, n is NUL-terminated and value is valid for its length.
    cvt(unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets the xattr `name` of the entry at `path` itself, with `setxattr(2)`'s `flags`.
pub fn lset_xattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (cstr(path.as_os_str())?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated and value is valid for its length.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// Removes the xattr `name` of the entry at `path` itself.
pub fn lremove_xattr(path: &Path, name: &OsStr) -> io::Result<()> {
    let (p, n) = (cstr(path.as_os_str())?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated C strings that outlive the call.
    cvt(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// Removes the xattr `name` of an open file.
pub fn fremove_xattr(f: &File, name: impl AsRef<OsStr>) -> io::Result<()> {
    let n = cstr(name.as_ref())?;
    // SAFETY: the fd is open and n is a NUL-terminated C string.
    cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) })
}

/// The `/proc/self/fd/N` path of an `O_PATH` handle, as a C string: the xattr
/// syscalls take no `O_PATH` fd, but resolve this path to exactly the entry the handle
/// holds (a symlink itself, never its target).
fn proc_cstr(fd: RawFd) -> io::Result<CString> {
    cstr(super::dir::proc_path(fd).as_os_str())
}

/// The xattr `name` of the entry an `O_PATH` handle holds.
pub fn get_at(fd: RawFd, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let (p, n) = (proc_cstr(fd)?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated and outlive the call; buf/len follow
    // get_with's contract.
    get_with(|buf, len| unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf, len) })
}

/// The xattr names of the entry an `O_PATH` handle holds.
pub fn list_at(fd: RawFd) -> io::Result<Vec<OsString>> {
    let p = proc_cstr(fd)?;
    Ok(split_names(
        // SAFETY: p is NUL-terminated; buf/len follow get_with's contract.
        get_with(|buf, len| unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) })?
            .unwrap_or_default(),
    ))
}

/// Sets the xattr `name` of the entry an `O_PATH` handle holds.
pub fn set_at(fd: RawFd, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (proc_cstr(fd)?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated and value is valid for its length.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// Removes the xattr `name` of the entry an `O_PATH` handle holds.
pub fn remove_at(fd: RawFd, name: &OsStr) -> io::Result<()> {
    let (p, n) = (proc_cstr(fd)?, cstr(name)?);
    // SAFETY: p and n are NUL-terminated C strings that outlive the call.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) })
}

fn split_names(raw: Vec<u8>) -> Vec<OsString> {
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// The xattr names of the entry at `path` itself.
pub fn llist_xattr(path: &Path) -> io::Result<Vec<OsString>> {
    let p = cstr(path.as_os_str())?;
    Ok(split_names(
        // SAFETY: p is NUL-terminated; buf/len follow get_with's contract.
        get_with(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })?
            .unwrap_or_default(),
    ))
}

/// The xattr names of an open file.
pub fn flist_xattr(f: &File) -> io::Result<Vec<OsString>> {
    Ok(split_names(
        // SAFETY: the fd is open; buf/len follow get_with's contract.
        get_with(|buf, len| unsafe { libc::flistxattr(f.as_raw_fd(), buf.cast(), len) })?
            .unwrap_or_default(),
    ))
}
