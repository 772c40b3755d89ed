//! Acting as the user a request comes from, for the syscalls that create entries.
//!
//! A daemon running as root switches the calling thread's effective uid, gid and
//! supplementary groups to the caller's around `mkdirat`, `openat(O_CREAT)`,
//! `mknodat` and `symlinkat`, so the backing filesystem itself gives the new entry its
//! owner and group (a setgid directory's group included), keeps or strips set-id bits
//! as it would for that user, and checks the user's permissions. Nothing is created as
//! root and chowned afterwards, so no kill -9 can leave a root-owned entry. In the
//! manner of virtiofsd: raw `setresuid`/`setresgid`/`setgroups` syscalls, which change
//! only the calling thread (glibc's wrappers change every thread of the process).

use crate::error::{FsError, FsResult};
use std::io;

/// Who a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's uid.
    pub uid: u32,
    /// The caller's gid.
    pub gid: u32,
    /// The calling process (0: unknown), whose supplementary groups apply.
    pub pid: u32,
}

impl Caller {
    /// Root, from no process in particular (no switch).
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    /// User `uid` of group `gid`, whose supplementary groups are not known.
    pub fn user(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, pid: 0 }
    }

    /// The daemon itself (no switch).
    pub fn daemon() -> Caller {
        // SAFETY: geteuid/getegid/getpid take nothing and cannot fail.
        unsafe {
            Caller {
                uid: libc::geteuid(),
                gid: libc::getegid(),
                pid: libc::getpid() as u32,
            }
        }
    }

    /// The supplementary groups of the calling process, from /proc (just the gid when
    /// the process is gone or unknown).
    fn groups(&self) -> Vec<libc::gid_t> {
        let status = (self.pid != 0)
            .then(|| std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok())
            .flatten();
        let mut groups: Vec<libc::gid_t> = status
            .as_deref()
            .and_then(|s| s.lines().find(|l| l.starts_with("Groups:")))
            .map(|l| {
                l["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if groups.is_empty() {
            groups.push(self.gid);
        }
        groups
    }

    /// Runs `f` with this thread acting as the caller, then switches back. A daemon
    /// that is not root (it cannot switch) and a root caller just run `f`.
    pub fn act<T>(&self, f: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 || self.uid == 0 {
            return f();
        }
        let groups = self.groups();
        let guard = Switched::to(self.uid, self.gid, &groups)
            .map_err(|e| FsError::io(format!("acting as uid {} gid {}", self.uid, self.gid), e))?;
        let r = f();
        drop(guard);
        r
    }
}

/// This thread's credentials switched to a user; switched back to root on drop.
struct Switched {
    groups: Vec<libc::gid_t>,
    egid: libc::gid_t,
}

/// A raw credentials syscall: changes only the calling thread.
fn raw(nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> io::Result<()> {
    // SAFETY: setresuid/setresgid/setgroups take integers (and, for setgroups, a pointer
    // and length the caller keeps valid); the result is checked.
    let r = unsafe { libc::syscall(nr, a, b, c) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    raw(
        libc::SYS_setgroups,
        groups.len() as libc::c_long,
        groups.as_ptr() as libc::c_long,
        0,
    )
}

impl Switched {
    fn to(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<Switched> {
        // SAFETY: getgroups with a null buffer and size 0 only returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut saved = vec![0 as libc::gid_t; n.max(0) as usize];
        // SAFETY: saved has room for n groups.
        let n = unsafe { libc::getgroups(saved.len() as libc::c_int, saved.as_mut_ptr()) };
        saved.truncate(n.max(0) as usize);
        let back = Switched {
            groups: saved,
            // SAFETY: getegid takes nothing and cannot fail.
            egid: unsafe { libc::getegid() },
        };
        // Groups and gid first: once the uid is not 0, they can no longer be changed.
        set_groups(groups)?;
        raw(libc::SYS_setresgid, -1, gid as libc::c_long, -1)?;
        raw(libc::SYS_setresuid, -1, uid as libc::c_long, -1)?;
        Ok(back)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        let r = raw(libc::SYS_setresuid, -1, 0, -1)
            .and_then(|()| raw(libc::SYS_setresgid, -1, self.egid as libc::c_long, -1))
            .and_then(|()| set_groups(&self.groups));
        if let Err(e) = r {
            // A request thread left with a user's credentials would act as that user
            // for everyone after: stop rather than serve like that.
            log::error!("cannot switch back to root credentials: {e}; aborting");
            std::process::abort();
        }
    }
}
