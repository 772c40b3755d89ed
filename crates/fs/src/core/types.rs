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
