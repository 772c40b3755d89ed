//! Open files: open and create, read, write, fsync and release.

use super::content::{Changed, Content};
use super::handles::Handle;
use super::inode::noent;
use super::lock;
use super::overlay::{range_end, Overlay, Seg};
use super::types::{Allocate, Attr, Ino, Kind, OpenReply, STATUS_INO};
use super::Core;
use crate::error::{FsError, FsResult, IoContext};
use crate::store::{Caller, Stat};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

impl Core {
    /// Opens `ino` with `open(2)`'s `flags`; returns the handle and how the kernel
    /// should cache it.
    pub fn open(&self, ino: Ino, flags: i32) -> FsResult<(u64, OpenReply)> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = write && flags & libc::O_TRUNC != 0;
        if ino == STATUS_INO {
            if write {
                return Err(FsError::refused(
                    libc::EACCES,
                    "the status file is read-only",
                ));
            }
            let data = self.status().to_json().into_bytes();
            return Ok((
                self.handles.insert(Handle::Status { data }),
                OpenReply {
                    keep_cache: false,
                    direct_io: true,
                },
            ));
        }
        let content = {
            let mut t = self.table();
            let node = t.node(ino)?;
            if node.is_orphan() && node.content.is_none() {
                return Err(Self::stale());
            }
            match node.kind {
                Kind::Dir => {
                    return Err(FsError::refused(libc::EISDIR, "is a directory"));
                }
                Kind::File => {}
                _ => return Err(FsError::refused(libc::ENXIO, "not a regular file")),
            }
            // O_TRUNC replaces the content without reading it (a damaged blob too).
            let c = if trunc {
                None
            } else {
                Some(self.load_content(&mut t, ino)?)
            };
            if let Some(n) = t.get_mut(ino) {
                n.opens += 1;
                n.writers += write as u32;
            }
            c
        };
        let fh = self.handles.insert(Handle::File { ino, write });
        if trunc {
            if let Err(e) = self.truncate(ino, 0) {
                self.release(fh);
                return Err(e);
            }
            return Ok((fh, OpenReply::default()));
        }
        Ok((
            fh,
            OpenReply {
                keep_cache: matches!(content, Some(Content::Blob { .. })),
                direct_io: false,
            },
        ))
    }

    /// Creates and opens regular file `name` in `parent` as `caller` (or opens it, if
    /// it exists and `O_EXCL` is not set).
    pub fn create(
        &self,
        parent: Ino,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        caller: &Caller,
    ) -> FsResult<(Attr, u64, OpenReply)> {
        let dir = self.new_entry(parent, name)?;
        let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let f = match caller.act(|| dir.open_file(name, create, mode & 0o7777)) {
            Ok(f) => f,
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                let (fh, reply) = self.open(attr.ino, flags)?;
                return Ok((self.getattr(attr.ino)?, fh, reply));
            }
            Err(e) => return Err(e),
        };
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let md = Stat::of(&f).ctx(dir.show(name))?;
        let ino = {
            let mut t = self.table();
            let ino = t.node_for(parent, name, &md);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
                n.opens += 1;
                n.writers += write as u32;
                n.fresh = true;
                n.content = Some(Content::Plain(Arc::new(f)));
            }
            ino
        };
        let fh = self.handles.insert(Handle::File { ino, write });
        Ok((Self::attr_from(ino, &md, 0), fh, OpenReply::default()))
    }

    /// Reads up to `size` bytes at `offset` (decoding only what a blob needs).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let status = self.handles.with(fh, |h| match h {
            Some(Handle::Status { data }) => {
                let start = (offset as usize).min(data.len());
                Some(data[start..(start + size as usize).min(data.len())].to_vec())
            }
            _ => None,
        });
        if let Some(data) = status {
            return Ok(data);
        }
        let (ino, content) = self.open_content(fh)?;
        self.read_content(&content, offset, size as u64)
            .map_err(|e| e.in_file(self.describe(ino)))
    }

    /// The node and the content of open file handle `fh`.
    fn open_content(&self, fh: u64) -> FsResult<(Ino, Content)> {
        let ino = self.handles.file(fh, false)?;
        let content = self
            .table()
            .get(ino)
            .and_then(|n| n.content.clone())
            .ok_or_else(noent)?;
        Ok((ino, content))
    }

    /// `lseek(2)`'s `SEEK_DATA` (`hole` false) and `SEEK_HOLE` (`hole` true): where
    /// the first data, or hole, at or after `offset` starts. The end of the file is a
    /// hole; past it, or with no data after `offset`, ENXIO. A compressed file's holes
    /// are its zero extents and the zeros its overlay shows (a truncate that grew it);
    /// a plaintext file's are the backing file's.
    pub fn seek(&self, fh: u64, offset: u64, hole: bool) -> FsResult<u64> {
        let (_, content) = self.open_content(fh)?;
        let (blob, overlay) = match content {
            Content::Blob { blob, overlay, .. } => (blob, overlay),
            Content::Plain(f) => return seek_plain(&f, offset, hole),
        };
        let (size, plan) = {
            let live = lock(&overlay);
            let size = live.overlay.size();
            if offset >= size {
                return Err(no_data());
            }
            (size, live.overlay.plan(offset, size - offset))
        };
        let pieces = blob.extents();
        let mut pos = offset;
        for seg in plan {
            match seg {
                Seg::Log { len, .. } => {
                    if !hole {
                        return Ok(pos);
                    }
                    pos += len;
                }
                Seg::Zero { len } => {
                    if hole {
                        return Ok(pos);
                    }
                    pos += len;
                }
                Seg::Blob { off, len } => {
                    let first = pieces.partition_point(|p| p.0 + p.1 <= off);
                    for (i, p) in pieces.iter().enumerate().skip(first) {
                        if p.0 >= off + len {
                            break;
                        }
                        if blob.is_hole(i) == hole {
                            return Ok(p.0.max(off));
                        }
                    }
                    pos += len;
                }
            }
        }
        if hole {
            Ok(size)
        } else {
            Err(no_data())
        }
    }

    /// Writes `data` at `offset`; returns how much landed (short on a full disk). A
    /// compressed file takes the write into its overlay log (all of it or none),
    /// without decoding anything.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let ino = self.handles.file(fh, true)?;
        let f = match self.change_overlay(ino, |o, f| o.write(f, offset, data))? {
            Changed::Logged(()) => return Ok(data.len() as u32),
            Changed::Plain(f) => f,
        };
        // A write that fills the disk part-way is a short write (as on ext4): the caller
        // learns how much landed, and its next write gets ENOSPC.
        let mut n = 0;
        while n < data.len() {
            match f.write_at(&data[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) if n > 0 => break,
                Err(e) => return Err(FsError::io(self.describe(ino), e)),
            }
        }
        Ok(n as u32)
    }

    /// `fallocate(2)` on open handle `fh`: reserves `[offset, offset+len)`, or makes
    /// it read as zeros. A compressed file logs a punched or zeroed range as one
    /// overlay record (nothing is decoded, and the range costs nothing once the file is
    /// compressed again); reserving space in it only grows its size, since its bytes
    /// are made when it is compressed. A plaintext file passes the call on to its
    /// backing file.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, what: Allocate) -> FsResult<()> {
        let ino = self.handles.file(fh, true)?;
        if len == 0 {
            return Err(FsError::refused(libc::EINVAL, "fallocate of no bytes"));
        }
        let end = range_end(offset, len)
            .ok_or_else(|| FsError::refused(libc::EFBIG, "fallocate past the largest offset"))?;
        let f = if what == (Allocate::Reserve { keep_size: true }) {
            // Nothing the file shows changes: not a modification.
            match self.open_content(fh)?.1 {
                Content::Blob { .. } => return Ok(()),
                Content::Plain(f) => f,
            }
        } else {
            let change = |o: &mut Overlay, f: &File| {
                let grows = match what {
                    Allocate::Reserve { keep_size } | Allocate::ZeroRange { keep_size } => {
                        !keep_size && end > o.size()
                    }
                    Allocate::PunchHole => false,
                };
                if grows {
                    o.set_size(f, end)?;
                }
                match what {
                    Allocate::Reserve { .. } => Ok(()),
                    _ => o.zero(f, offset, len),
                }
            };
            match self.change_overlay(ino, change)? {
                Changed::Logged(()) => return Ok(()),
                Changed::Plain(f) => f,
            }
        };
        // SAFETY: fallocate on an fd that `f` owns and keeps open for the call; it
        // takes no pointers.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                what.mode(),
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(FsError::io(
                self.describe(ino),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Flushes a file's plaintext to disk (a blob is already synced when it is made),
    /// and for a file created in this mount also its directory entry, so a file that
    /// was fsynced is there after a power loss. EBADF for a handle that is not an open
    /// file.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        if self
            .handles
            .with(fh, |h| matches!(h, Some(Handle::Status { .. })))
        {
            return Ok(());
        }
        let ino = self.handles.file(fh, false)?;
        let (c, fresh) = {
            let t = self.table();
            let n = t.node(ino)?;
            let fresh = if n.fresh && !n.is_orphan() {
                Some(self.entry(&t, ino)?)
            } else {
                None
            };
            (n.content.clone(), fresh)
        };
        // A blob's own bytes were synced when it was made; its overlay log was not.
        let f = match c {
            Some(Content::Plain(f)) => Some(f),
            Some(Content::Blob { file, overlay, .. }) if lock(&overlay).overlay.is_logged() => {
                Some(file)
            }
            _ => None,
        };
        if let Some(f) = f {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .ctx(self.describe(ino))?;
        }
        if let Some(e) = fresh {
            e.dir.sync()?;
            if let Some(n) = self.table().get_mut(ino) {
                n.fresh = false;
            }
        }
        Ok(())
    }

    /// Closes a file handle; the last writer's close of a modified file queues it.
    pub fn release(&self, fh: u64) {
        let Some(Handle::File { ino, write }) = self.handles.remove(fh) else {
            return;
        };
        let mut t = self.table();
        let mut queue = false;
        if let Some(n) = t.get_mut(ino) {
            n.opens = n.opens.saturating_sub(1);
            if write {
                n.writers = n.writers.saturating_sub(1);
            }
            queue = n.wants_compression();
            n.let_go_if_closed();
        }
        t.maybe_remove(ino);
        drop(t);
        if queue {
            log::debug!("inode {ino}: queued for compression once it settles");
            self.queue.push_settled(ino, self.settle);
        }
    }
}

/// ENXIO: `SEEK_DATA` or `SEEK_HOLE` at or past the end, or no data after the offset.
fn no_data() -> FsError {
    FsError::refused(libc::ENXIO, "no data past the offset")
}

/// [`Core::seek`] in a plaintext file: the backing file's own holes.
fn seek_plain(f: &std::fs::File, offset: u64, hole: bool) -> FsResult<u64> {
    let whence = if hole {
        libc::SEEK_HOLE
    } else {
        libc::SEEK_DATA
    };
    let off = i64::try_from(offset).map_err(|_| no_data())?;
    // SAFETY: lseek on an fd that `f` owns and keeps open; it moves only that
    // description's offset, which the core never uses (it reads with pread).
    let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(f), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(FsError::refused(
            e.raw_os_error().unwrap_or(libc::EIO),
            "lseek on the backing file",
        ));
    }
    Ok(r as u64)
}
