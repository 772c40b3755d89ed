//! The one error type of the store and the filesystem, in the manner of mountpoint-s3's
//! `fs::error`: the errno the kernel gets, a message that names the file, the source
//! kept as a source, and the log level chosen where the error is made (a refused
//! request is routine, a damaged blob is not), so the FUSE adapter only logs it.

use log::Level;
use std::fmt;
use std::io;

/// A failed filesystem or store operation.
pub struct FsError {
    errno: i32,
    level: Level,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The filesystem's `Result`.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// An error with `errno`, logged at `level`.
    pub fn new(errno: i32, level: Level, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            level,
            message: message.into(),
            source: None,
        }
    }

    /// A request the filesystem refuses (a reserved name, a bad handle): routine, so it
    /// is logged at debug.
    pub fn refused(errno: i32, message: impl Into<String>) -> FsError {
        FsError::new(errno, Level::Debug, message)
    }

    /// A syscall on the backing store failed. The errno is the syscall's; the level is
    /// debug for the errnos a caller causes (a missing name, a full directory, a
    /// permission) and warn for the ones that mean the store itself is in trouble
    /// (EIO, ENOSPC, ENOMEM, and anything unexpected).
    pub fn io(what: impl fmt::Display, source: io::Error) -> FsError {
        let errno = source.raw_os_error().unwrap_or(libc::EIO);
        let level = if routine(errno) {
            Level::Debug
        } else {
            Level::Warn
        };
        FsError::new(errno, level, what.to_string()).with_source(source)
    }

    /// Keeps `source` as this error's cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> FsError {
        self.source = Some(source.into());
        self
    }

    /// Logs this error at `level` instead.
    pub fn at(mut self, level: Level) -> FsError {
        self.level = level;
        self
    }

    /// Says which file the error concerns: `file: message`.
    pub fn in_file(mut self, file: impl fmt::Display) -> FsError {
        self.message = format!("{file}: {}", self.message);
        self
    }

    /// What failed, without its sources.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The cause, for a caller that maps it to its own error (a command line tool
    /// finding the codec's error behind a filesystem one).
    pub fn into_source(self) -> Option<Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.source
    }

    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The level to log this error at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The message and every source, on one line: what a log line shows.
    pub fn report(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// Errnos that a caller's request causes, not a failing store.
fn routine(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::EACCES
            | libc::EPERM
            | libc::EINVAL
            | libc::ENAMETOOLONG
            | libc::ELOOP
            | libc::EXDEV
            | libc::EBUSY
            | libc::EMLINK
            | libc::ENODATA
            | libc::ERANGE
            | libc::E2BIG
            | libc::ENOTSUP
            | libc::EBADF
            | libc::ESTALE
            | libc::EROFS
            | libc::ETXTBSY
            | libc::EFBIG
    )
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FsError({}, errno {})", self.report(), self.errno)
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Adds what was being done to an `io::Result`: `.ctx(path)` or `.ctx("fsync")`. The
/// one context helper of the store and the filesystem.
pub trait IoContext<T> {
    /// Turns the error into an [`FsError::io`] about `what`.
    fn ctx(self, what: impl fmt::Display) -> FsResult<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> FsResult<T> {
        self.map_err(|e| FsError::io(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_errno_source_and_a_level_by_cause() {
        let e = FsError::io("/b/x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(e.level(), Level::Warn);
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.report().starts_with("/b/x: "), "{}", e.report());
        let e = FsError::io("/b/y", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!((e.errno(), e.level()), (libc::ENOENT, Level::Debug));
        let e = FsError::refused(libc::EPERM, "reserved").in_file("a/b");
        assert_eq!(e.to_string(), "a/b: reserved");
    }
}
