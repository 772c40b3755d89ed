//! The values the core's operations take and return: what the FUSE adapter translates
//! to and from the kernel's structures.

use crate::store::Stat;
use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inode number of the mount (our own; stable while the file's content is replaced).
pub type Ino = u64;
/// The mount's root directory.
pub const ROOT_INO: Ino = 1;
/// The hidden, read-only status file at the mount root (not listed by readdir).
pub const STATUS_INO: Ino = 2;
/// The status file's name in the mount root.
pub const STATUS_NAME: &str = ".nacrithfs-status";

/// The type of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file (plaintext or blob in the backing store).
    File,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

impl Kind {
    /// The kind of the backing entry `st` describes.
    pub fn of(st: &Stat) -> Kind {
        match st.mode() & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => Kind::File,
        }
    }
}

/// File attributes as the mount shows them.
#[derive(Clone, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Size: the original length for a blob.
    pub size: u64,
    /// 512-byte blocks used in the backing store (so `du` shows what compression saves).
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// Type.
    pub kind: Kind,
    /// Permission bits (with set-id and sticky bits).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (devices only).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// A time to set.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    /// The current time.
    Now,
    /// This time.
    At(SystemTime),
}

/// What a `setattr` changes; `None` leaves it.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (truncate or extend).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<SetTime>,
    /// Modification time.
    pub mtime: Option<SetTime>,
}

/// What a `fallocate(2)` call asks for, from its mode bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Reserve space (mode 0 or `FALLOC_FL_KEEP_SIZE`); without `keep_size` a range
    /// past the end grows the file, reading as zeros.
    Reserve {
        /// `FALLOC_FL_KEEP_SIZE`: the size stays.
        keep_size: bool,
    },
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: the range reads as zeros and its
    /// space may be freed; the size never changes.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: the range reads as zeros; without `keep_size` a range
    /// past the end grows the file.
    ZeroRange {
        /// `FALLOC_FL_KEEP_SIZE`: the size stays.
        keep_size: bool,
    },
}

impl Allocate {
    /// The request `fallocate(2)`'s `mode` names; EOPNOTSUPP for the modes this
    /// filesystem does not offer (collapse, insert, unshare) and, as on Linux, for a
    /// hole punch without `FALLOC_FL_KEEP_SIZE`.
    pub fn from_mode(mode: i32) -> Result<Allocate, crate::error::FsError> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => Ok(Allocate::Reserve { keep_size }),
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => Ok(Allocate::PunchHole),
            libc::FALLOC_FL_ZERO_RANGE => Ok(Allocate::ZeroRange { keep_size }),
            _ => Err(crate::error::FsError::refused(
                libc::EOPNOTSUPP,
                format!("fallocate mode {mode:#x} is not supported"),
            )),
        }
    }

    /// The mode bits to pass on to the backing file's `fallocate(2)`.
    pub fn mode(self) -> i32 {
        match self {
            Allocate::Reserve { keep_size: false } => 0,
            Allocate::Reserve { keep_size: true } => libc::FALLOC_FL_KEEP_SIZE,
            Allocate::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Allocate::ZeroRange { keep_size } => {
                libc::FALLOC_FL_ZERO_RANGE
                    | if keep_size {
                        libc::FALLOC_FL_KEEP_SIZE
                    } else {
                        0
                    }
            }
        }
    }
}

/// How the kernel should treat an open file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenReply {
    /// Keep the page cache (compressed files: repeat reads never decode again).
    pub keep_cache: bool,
    /// Bypass the page cache (the status file, whose size is unknown).
    pub direct_io: bool,
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: Ino,
    /// Its type.
    pub kind: Kind,
    /// Its name.
    pub name: OsString,
}

/// Filesystem statistics (those of the backing filesystem).
#[derive(Clone, Debug, Default)]
pub struct Statfs {
    /// Blocks in all.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes in all.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// A `stat` time as a `SystemTime`.
pub(super) fn to_time((s, ns): (i64, i64)) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

/// A time to set as the `timespec` of `utimensat(2)` (`UTIME_OMIT` for `None`).
pub(super) fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: ns,
                }
            }
        },
    }
}
