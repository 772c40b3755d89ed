//! Sharing the cores with other model processes on the machine. llama.cpp's CPU threads
//! spin at every barrier; two processes each running a team as wide as the machine
//! keep preempting each other's spinning threads, and both slow down by far more than
//! twice (on 2 cores: 6.0 s alone, 39.7 s each side by side, 9.6 s each with one thread
//! apiece). So every model worker says when it is decoding, and one that starts while
//! others are decoding takes only its share of the cores.
//!
//! How: each worker has a file in a shared directory (`/dev/shm/nacrithfs-cpu`) and
//! holds an exclusive `flock` on it while it decodes. Counting the others is trying a
//! shared lock on each of their files: a held one is a worker decoding now. A dead
//! process's lock is gone with it, so a stale file never counts, and it is removed.
//! Only the thread count changes, which does not change what is decoded.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the workers of all processes and users meet.
fn share_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join("nacrithfs-cpu")
}

/// This worker's place in the shared directory.
pub(crate) struct CpuShare {
    dir: PathBuf,
    name: String,
    file: File,
    active: bool,
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a file descriptor that `f` owns and keeps open for the call.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

impl CpuShare {
    /// Joins the shared directory (made world-writable and sticky, like /tmp, so that
    /// the daemon and users' commands see each other). `None` where that fails: the
    /// worker then uses its configured threads, as before.
    pub(crate) fn join() -> Option<CpuShare> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = share_dir();
        if std::fs::DirBuilder::new().mode(0o1777).create(&dir).is_ok() {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
        }
        // Only a real directory owned by root or by us: never one that another user
        // made or pointed elsewhere with a symlink (files are created and removed in
        // it, possibly as root). In the sticky /dev/shm nobody else can swap it.
        let md = std::fs::symlink_metadata(&dir).ok()?;
        // SAFETY: geteuid has no arguments and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !md.file_type().is_dir() || (md.uid() != 0 && md.uid() != me) {
            log::debug!(
                "{} is not a directory of root or ours: not shared",
                dir.display()
            );
            return None;
        }
        let name = format!(
            "{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(&name))
            .ok()?;
        Some(CpuShare {
            dir,
            name,
            file,
            active: false,
        })
    }

    /// This worker starts decoding.
    pub(crate) fn begin(&mut self) {
        if !self.active {
            self.active = flock(&self.file, libc::LOCK_EX);
        }
    }

    /// This worker has stopped decoding.
    pub(crate) fn end(&mut self) {
        if self.active {
            flock(&self.file, libc::LOCK_UN);
            self.active = false;
        }
    }

    /// Workers of other processes (or of this one) decoding now. Removes the files of
    /// processes that are gone.
    pub(crate) fn others_active(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == self.name {
                continue;
            }
            let Ok(f) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(ent.path())
            else {
                continue;
            };
            if !flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
                n += 1;
            } else if pid_gone(name) {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        n
    }
}

/// Whether the process that named a file `PID.N` no longer exists.
fn pid_gone(name: &str) -> bool {
    let Some(pid) = name.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Drop for CpuShare {
    fn drop(&mut self) {
        self.end();
        let _ = std::fs::remove_file(self.dir.join(&self.name));
    }
}

/// The threads a worker takes of `cores` when `others` are decoding beside it.
pub(crate) fn share_of(cores: usize, others: usize) -> usize {
    (cores / (others + 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_counts_and_a_released_one_does_not() {
        let (Some(mut a), Some(b)) = (CpuShare::join(), CpuShare::join()) else {
            return; // no shared directory here
        };
        let base = b.others_active();
        a.begin();
        assert_eq!(b.others_active(), base + 1);
        a.end();
        assert_eq!(b.others_active(), base);
        drop(a);
        assert_eq!(share_of(2, 0), 2);
        assert_eq!(share_of(2, 1), 1);
        assert_eq!(share_of(16, 3), 4);
        assert_eq!(share_of(1, 5), 1);
    }
}
