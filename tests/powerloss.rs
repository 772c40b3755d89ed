//! Power loss, not only kill -9: what is on the disk after the power is cut.
//!
//! BACKING is real ext4 on a loop device. The loop device's image file is served by a
//! FUSE file in this test, the *log disk*, which records every block write and every
//! flush in order, as dm-log-writes does (the loop device turns a disk-cache flush,
//! and a FUA write, into an fsync of its file). A workload runs through a live
//! nacrithfs mount: files fsynced and then compressed in the background, text through
//! the model, overwrites, truncations and appends of compressed files, renames between
//! directories, unlinks, and files never fsynced. The test also writes numbered marks
//! into the log: one before each operation starts and one after it was acknowledged
//! (its fsync returned).
//!
//! The disk is then rebuilt as a power cut would have left it, at many points of the
//! log: at flushes around every mark and spread over the rest, at single writes
//! between flushes (a cache that wrote back in order), and with a random subset of the
//! writes since the last flush (one that wrote back out of order). Each image is
//! mounted (ext4 replays its journal) and nacrithfs mounts it (its recovery runs).
//! Then every file must read, without an error, as the marks before the cut allow:
//! - a file whose last operation was acknowledged has exactly that content, whether or
//!   not the compressor was replacing it with a blob at the cut;
//! - a file being written has, byte for byte, its old or its new content;
//! - a file never fsynced may be missing or short, but is exact once the daemon said
//!   it had compressed it (`nacrithfs wait` returned: a blob is only installed synced);
//! - a file being renamed is at exactly one of its two names, an unlinked one is gone,
//!   and nothing else appears.
//!
//! It needs root, /dev/loop-control and mkfs.ext4, and says SKIP without them.

#[path = "common/mount.rs"]
mod mount;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use mount::{serial, Mount, Opts, Rng};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const ENGLISH: &str = include_str!("data/english.txt");
const RUN_BYTES: [u8; 6] = [0x00, 0x01, 0x80, 0x9c, 0xc0, 0xff];
/// The disk: big enough for the workload and its temporary copies, small enough to
/// rebuild a few dozen times.
const DISK_BYTES: usize = 96 << 20;

// ---------------------------------------------------------------------------------
// The log disk

/// One entry of the write log.
enum Rec {
    Write {
        off: u64,
        data: Vec<u8>,
    },
    /// The disk's cache was flushed: everything before is durable.
    Flush,
    /// The test's event number `n` happened here.
    Mark(usize),
}

struct Disk {
    image: Vec<u8>,
    log: Vec<Rec>,
}

/// A directory with two files: `disk.img` (the disk, logged) and `mark` (a decimal
/// number written to it becomes a mark).
struct LogDisk(Arc<Mutex<Disk>>);

const ROOT: u64 = 1;
const IMG: u64 = 2;
const MARK: u64 = 3;
const TTL: Duration = Duration::from_secs(3600);

fn attr(ino: u64, size: u64) -> FileAttr {
    let t = SystemTime::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if ino == ROOT {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if ino == ROOT { 0o755 } else { 0o600 },
        nlink: if ino == ROOT { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl LogDisk {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        match ino {
            ROOT => Some(attr(ROOT, 0)),
            IMG => Some(attr(IMG, DISK_BYTES as u64)),
            MARK => Some(attr(MARK, 0)),
            _ => None,
        }
    }
}

impl Filesystem for LogDisk {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match name.to_str() {
            Some("disk.img") if parent.0 == ROOT => IMG,
            Some("mark") if parent.0 == ROOT => MARK,
            _ => return reply.error(Errno::ENOENT),
        };
        reply.entry(&TTL, &self.attr_of(ino).expect("known"), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr_of(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != IMG {
            return reply.data(&[]);
        }
        let d = self.disk();
        let start = (offset as usize).min(DISK_BYTES);
        let end = (start + size as usize).min(DISK_BYTES);
        reply.data(&d.image[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut d = self.disk();
        match ino.0 {
            IMG => {
                let start = offset as usize;
                if start + data.len() > DISK_BYTES {
                    return reply.error(Errno::ENOSPC);
                }
                d.image[start..start + data.len()].copy_from_slice(data);
                d.log.push(Rec::Write {
                    off: offset,
                    data: data.to_vec(),
                });
            }
            MARK => match std::str::from_utf8(data)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(n) => d.log.push(Rec::Mark(n)),
                None => return reply.error(Errno::EINVAL),
            },
            _ => return reply.error(Errno::EBADF),
        }
        reply.written(data.len() as u32);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == IMG {
            self.disk().log.push(Rec::Flush);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// The loop device zeroes or discards ranges with fallocate: logged as a write of
    /// zeros, which is what a later read returns either way.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        let (start, end) = (offset as usize, (offset + length) as usize);
        if ino.0 != IMG || end > DISK_BYTES {
            return reply.error(Errno::EINVAL);
        }
        let mut d = self.disk();
        d.image[start..end].fill(0);
        d.log.push(Rec::Write {
            off: offset,
            data: vec![0; end - start],
        });
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (IMG, FileType::RegularFile, "disk.img"),
            (MARK, FileType::RegularFile, "mark"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

// ---------------------------------------------------------------------------------
// Commands and clean-up

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unmounts what it holds on drop, innermost first, so a failing test leaves nothing.
#[derive(Default)]
struct Teardown {
    ext4: Option<PathBuf>,
    loopdev: Option<String>,
}

impl Teardown {
    fn unmount_ext4(&mut self) {
        if let Some(m) = self.ext4.take() {
            let _ = run("umount", &[m.to_str().unwrap()]);
        }
        if let Some(l) = self.loopdev.take() {
            let _ = run("losetup", &["-d", &l]);
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.unmount_ext4();
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    for tool in ["mkfs.ext4", "losetup"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("no {tool}"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------
// The workload and what each mark allows

/// What the test did, in mark order. `Start` events come before an operation and
/// the others after it was acknowledged.
#[derive(Clone, Debug)]
enum Ev {
    /// File `id` (at `path` when new) is about to be written to hold `content`.
    Write {
        id: usize,
        path: String,
        content: Vec<u8>,
    },
    /// File `id`'s last write was fsynced (and its directory, when new).
    Synced(usize),
    Move {
        id: usize,
        to: String,
    },
    Moved(usize),
    Unlink(usize),
    Unlinked(usize),
    /// `nacrithfs wait` returned: everything written is compressed, so synced.
    Settled,
}

#[derive(Clone, Debug)]
enum Spec {
    Exact(Vec<u8>),
    /// Being overwritten: each byte is the old one or the new one.
    Changing(Vec<u8>, Vec<u8>),
    /// Never synced: missing, or each byte the new one.
    Fresh(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Loc {
    At(String),
    Moving(String, String),
    Going(String),
}

#[derive(Clone, Debug)]
struct Expect {
    loc: Loc,
    spec: Spec,
}

/// What the events before a cut allow, file by file.
fn expectations(events: &[Ev]) -> BTreeMap<usize, Expect> {
    let mut m: BTreeMap<usize, Expect> = BTreeMap::new();
    for e in events {
        match e {
            Ev::Write { id, path, content } => match m.get_mut(id) {
                None => {
                    m.insert(
                        *id,
                        Expect {
                            loc: Loc::At(path.clone()),
                            spec: Spec::Fresh(content.clone()),
                        },
                    );
                }
                Some(x) => {
                    x.spec = match &x.spec {
                        Spec::Exact(old) => Spec::Changing(old.clone(), content.clone()),
                        _ => panic!("the workload writes a file twice without a sync"),
                    }
                }
            },
            Ev::Synced(id) => {
                let x = m.get_mut(id).expect("written");
                x.spec = match &x.spec {
                    Spec::Changing(_, new) | Spec::Fresh(new) => Spec::Exact(new.clone()),
                    s => s.clone(),
                }
            }
            Ev::Move { id, to } => {
                let x = m.get_mut(id).expect("written");
                let Loc::At(from) = &x.loc else {
                    panic!("moved while moving")
                };
                x.loc = Loc::Moving(from.clone(), to.clone());
            }
            Ev::Moved(id) => {
                let x = m.get_mut(id).expect("written");
                let Loc::Moving(_, to) = &x.loc else {
                    panic!("not moving")
                };
                x.loc = Loc::At(to.clone());
            }
            Ev::Unlink(id) => {
                let x = m.get_mut(id).expect("written");
                let Loc::At(p) = &x.loc else {
                    panic!("unlinked while moving")
                };
                x.loc = Loc::Going(p.clone());
            }
            Ev::Unlinked(id) => {
                m.remove(id);
            }
            Ev::Settled => {
                for x in m.values_mut() {
                    if let Spec::Changing(_, new) | Spec::Fresh(new) = &x.spec {
                        x.spec = Spec::Exact(new.clone());
                    }
                }
            }
        }
    }
    m
}

/// Each byte of `got` is the byte of `a` or of `b` at that offset.
fn mixture(got: &[u8], a: &[u8], b: &[u8]) -> bool {
    got.len() <= a.len().max(b.len())
        && got
            .iter()
            .enumerate()
            .all(|(i, c)| a.get(i) == Some(c) || b.get(i) == Some(c))
}

fn describe(c: &[u8]) -> String {
    format!("{} bytes", c.len())
}

/// Checks the tree under `mnt` against `want`; the errors found.
fn check(mnt: &Path, want: &BTreeMap<usize, Expect>) -> Vec<String> {
    let mut found: BTreeMap<String, Result<Vec<u8>, String>> = BTreeMap::new();
    let mut errs = Vec::new();
    walk(mnt, mnt, &mut found, &mut errs);
    for (id, x) in want {
        let places: Vec<&String> = match &x.loc {
            Loc::At(p) | Loc::Going(p) => vec![p],
            Loc::Moving(a, b) => vec![a, b],
        };
        let present: Vec<(&String, Result<Vec<u8>, String>)> = places
            .iter()
            .filter_map(|p| found.remove(*p).map(|c| (*p, c)))
            .collect();
        let may_be_missing = matches!(x.loc, Loc::Going(_)) || matches!(x.spec, Spec::Fresh(_));
        match present.len() {
            0 if may_be_missing => continue,
            0 => {
                errs.push(format!("file {id} ({:?}) is missing", x.loc));
                continue;
            }
            1 => {}
            _ => {
                errs.push(format!(
                    "file {id} is at both names of its rename {:?}",
                    x.loc
                ));
                continue;
            }
        }
        let (path, got) = &present[0];
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                errs.push(format!("{path}: {e}"));
                continue;
            }
        };
        let ok = match &x.spec {
            Spec::Exact(c) => got == c,
            Spec::Changing(old, new) => mixture(got, old, new),
            Spec::Fresh(new) => mixture(got, new, new),
        };
        if !ok {
            errs.push(format!(
                "{path}: {} is not what {:?} allows (want {})",
                describe(got),
                match &x.spec {
                    Spec::Exact(_) => "exact",
                    Spec::Changing(..) => "old or new",
                    Spec::Fresh(_) => "new or missing",
                },
                match &x.spec {
                    Spec::Exact(c) | Spec::Fresh(c) => describe(c),
                    Spec::Changing(a, b) => format!("{} or {}", describe(a), describe(b)),
                }
            ));
        }
    }
    for p in found.keys() {
        errs.push(format!("{p}: a file that should not exist"));
    }
    errs
}

/// Every regular file under `dir` (relative to `root`) and what reading it gave.
fn walk(
    root: &Path,
    dir: &Path,
    found: &mut BTreeMap<String, Result<Vec<u8>, String>>,
    errs: &mut Vec<String>,
) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return errs.push(format!("{}: {e}", dir.display())),
    };
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                errs.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let p = ent.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with(".nacrithfs") {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => walk(root, &p, found, errs),
            Ok(md) if md.is_file() => {
                found.insert(rel, std::fs::read(&p).map_err(|e| e.to_string()));
            }
            Ok(_) => errs.push(format!("{rel}: not a regular file")),
            Err(e) => errs.push(format!("{rel}: {e}")),
        }
    }
}

struct Workload {
    mnt: PathBuf,
    mark: File,
    events: Vec<Ev>,
    paths: Vec<String>,
    rng: Rng,
}

impl Workload {
    fn mark(&mut self, e: Ev) {
        self.events.push(e);
        let n = self.events.len() - 1;
        self.mark.write_all(n.to_string().as_bytes()).unwrap();
    }

    fn binary(&mut self, n: usize) -> Vec<u8> {
        self.rng.binary(n, 512, |r| {
            RUN_BYTES[r.below(RUN_BYTES.len() as u64) as usize]
        })
    }

    fn sync_dir(&self, rel: &str) {
        File::open(self.mnt.join(rel)).unwrap().sync_all().unwrap();
    }

    /// A new file, fsynced with its directory when `sync`.
    fn create(&mut self, path: &str, content: Vec<u8>, sync: bool) -> usize {
        let id = self.paths.len();
        self.paths.push(path.to_string());
        self.mark(Ev::Write {
            id,
            path: path.to_string(),
            content: content.clone(),
        });
        let mut f = File::create(self.mnt.join(path)).unwrap();
        f.write_all(&content).unwrap();
        if sync {
            f.sync_all().unwrap();
            drop(f);
            self.sync_dir(Path::new(path).parent().unwrap().to_str().unwrap());
            self.mark(Ev::Synced(id));
        }
        id
    }

    /// Rewrites file `id` to hold `new`: in place over `old`'s bytes, or truncated
    /// first when `truncate`; fsynced when `sync`.
    fn rewrite(&mut self, id: usize, old: &[u8], new: Vec<u8>, truncate: bool, sync: bool) {
        let path = self.paths[id].clone();
        self.mark(Ev::Write {
            id,
            path: path.clone(),
            content: new.clone(),
        });
        let f = OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(self.mnt.join(&path))
            .unwrap();
        // Only the bytes that differ are written: an overwrite in place or an append.
        let from = if truncate {
            0
        } else {
            old.iter().zip(&new).take_while(|(a, b)| a == b).count()
        };
        f.write_all_at(&new[from..], from as u64).unwrap();
        if new.len() < old.len() && !truncate {
            f.set_len(new.len() as u64).unwrap();
        }
        if sync {
            f.sync_all().unwrap();
            drop(f);
            self.mark(Ev::Synced(id));
        }
    }

    fn rename(&mut self, id: usize, to: &str) {
        let from = self.paths[id].clone();
        self.mark(Ev::Move {
            id,
            to: to.to_string(),
        });
        std::fs::rename(self.mnt.join(&from), self.mnt.join(to)).unwrap();
        for p in [&from, &to.to_string()] {
            self.sync_dir(Path::new(p).parent().unwrap().to_str().unwrap());
        }
        self.paths[id] = to.to_string();
        self.mark(Ev::Moved(id));
    }

    fn unlink(&mut self, id: usize) {
        let p = self.paths[id].clone();
        self.mark(Ev::Unlink(id));
        std::fs::remove_file(self.mnt.join(&p)).unwrap();
        self.sync_dir(Path::new(&p).parent().unwrap().to_str().unwrap());
        self.mark(Ev::Unlinked(id));
    }

    fn settle(&mut self, m: &Mount) {
        m.wait();
        self.mark(Ev::Settled);
    }

    /// The content of file `id` as the last event wrote it.
    fn content(&self, id: usize) -> Vec<u8> {
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Ev::Write { id: i, content, .. } if *i == id => Some(content.clone()),
                _ => None,
            })
            .expect("written")
    }

    /// Every kind of operation, with the compressor working in the background.
    fn run(&mut self, m: &Mount) {
        for d in ["a", "b"] {
            std::fs::create_dir(self.mnt.join(d)).unwrap();
        }
        self.sync_dir(".");
        let mut bins = Vec::new();
        for i in 0..6 {
            let n = 96 * 1024 + self.rng.below(160 * 1024) as usize;
            let c = self.binary(n);
            bins.push(self.create(&format!("a/bin{i}"), c, true));
        }
        let text = ENGLISH.as_bytes()[..400].to_vec();
        let t = self.create("a/notes.txt", text, true);
        let lazy: Vec<usize> = (0..2)
            .map(|i| {
                let c = self.binary(128 * 1024);
                self.create(&format!("b/lazy{i}"), c, false)
            })
            .collect();
        self.settle(m);

        // Writes into compressed files: in place, truncated and rewritten, appended.
        let old = self.content(bins[0]);
        let mut new = old.clone();
        let patch = self.binary(48 * 1024);
        new[20_000..20_000 + patch.len()].copy_from_slice(&patch);
        self.rewrite(bins[0], &old, new, false, true);
        let old = self.content(bins[1]);
        let new = self.binary(70 * 1024);
        self.rewrite(bins[1], &old, new, true, true);
        let old = self.content(bins[2]);
        let mut new = old.clone();
        new.extend(self.binary(40 * 1024));
        self.rewrite(bins[2], &old, new, false, true);
        self.rename(bins[3], "b/moved");
        self.unlink(bins[4]);
        let old = self.content(t);
        let new = ENGLISH.as_bytes()[400..700].to_vec();
        self.rewrite(t, &old, new, true, true);
        // Never synced by the user: compressed, so synced, by the time `wait` returns.
        let old = self.content(bins[5]);
        let new = self.binary(old.len());
        self.rewrite(bins[5], &old, new, false, false);
        let old = self.content(lazy[0]);
        let mut new = old.clone();
        new.extend(self.binary(8 * 1024));
        self.rewrite(lazy[0], &old, new, false, false);
        self.settle(m);
    }
}

// ---------------------------------------------------------------------------------
// Cuts

/// A state of the disk after a power cut: the first `upto` records, plus (out of
/// order) the writes at `extra`, which all lie before the next flush.
struct Cut {
    upto: usize,
    extra: Vec<usize>,
    why: &'static str,
}

fn choose_cuts(log: &[Rec], rng: &mut Rng) -> Vec<Cut> {
    let flushes: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Rec::Flush))
        .map(|(i, _)| i + 1)
        .collect();
    let marks: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Rec::Mark(_)))
        .map(|(i, _)| i)
        .collect();
    let mut at = std::collections::BTreeSet::new();
    // Around each mark: the last flush before it and the first two after.
    for &m in &marks {
        let k = flushes.partition_point(|&f| f <= m);
        let around = k.saturating_sub(1)..(k + 2).min(flushes.len());
        at.extend(flushes[around].iter().copied());
    }
    // Spread over the rest.
    let step = (flushes.len() / 12).max(1);
    at.extend(flushes.iter().step_by(step));
    let mut cuts: Vec<Cut> = at
        .into_iter()
        .map(|upto| Cut {
            upto,
            extra: vec![],
            why: "at a flush",
        })
        .collect();
    // Part of the cache written back, in order.
    for _ in 0..8 {
        cuts.push(Cut {
            upto: rng.below(log.len() as u64 + 1) as usize,
            extra: vec![],
            why: "between flushes",
        });
    }
    // Part of it written back out of order.
    for _ in 0..6 {
        let f = flushes[rng.below(flushes.len() as u64) as usize];
        let next = flushes
            .iter()
            .find(|&&g| g > f)
            .map(|g| g - 1)
            .unwrap_or(log.len());
        let extra = (f..next)
            .filter(|&i| matches!(log[i], Rec::Write { .. }) && rng.chance(50))
            .collect();
        cuts.push(Cut {
            upto: f,
            extra,
            why: "out of order",
        });
    }
    cuts.sort_by_key(|c| c.upto);
    cuts
}

/// The events the test had marked before record `upto` (and, for a cut with writes
/// out of order, before the next flush: a mark there was acknowledged by then).
fn marked(log: &[Rec], cut: &Cut) -> usize {
    let end = cut.extra.last().map_or(cut.upto, |&i| i + 1).max(cut.upto);
    log[..end]
        .iter()
        .filter_map(|r| match r {
            Rec::Mark(n) => Some(n + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn apply(img: &mut [u8], r: &Rec) {
    if let Rec::Write { off, data } = r {
        img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
}

#[test]
fn power_loss_keeps_every_acknowledged_byte() {
    if let Some(why) = unsupported() {
        eprintln!("SKIP power_loss_keeps_every_acknowledged_byte: {why}");
        return;
    }
    let _g = serial();
    let seed = mount::seed(0x9031_7e55);
    let root = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let p = root.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (logfs, backing, mnt) = (dir("logfs"), dir("backing"), dir("mnt"));
    let daemon_log = root.path().join("daemon.log");

    // A fresh ext4 image, with its tables written now rather than lazily after mount.
    let base = root.path().join("base.img");
    File::create(&base)
        .unwrap()
        .set_len(DISK_BYTES as u64)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            base.to_str().unwrap(),
        ],
    )
    .expect("mkfs.ext4");
    let base_img = std::fs::read(&base).unwrap();

    let disk = Arc::new(Mutex::new(Disk {
        image: base_img.clone(),
        log: Vec::new(),
    }));
    let session = fuser::spawn_mount(LogDisk(disk.clone()), &logfs, &fuser::Config::default())
        .expect("mount the log disk");
    let mut td = Teardown::default();
    let img = logfs.join("disk.img");
    let dev = match run("losetup", &["--find", "--show", img.to_str().unwrap()]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIP power_loss_keeps_every_acknowledged_byte: {e}");
            return;
        }
    };
    td.loopdev = Some(dev.clone());
    // Without auto_da_alloc, ext4 does not flush a file renamed over another on its own:
    // what is durable is only what nacrithfs synced, as POSIX promises and no more.
    run(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            "noauto_da_alloc",
            &dev,
            backing.to_str().unwrap(),
        ],
    )
    .expect("mount ext4");
    td.ext4 = Some(backing.clone());

    let opts = || Opts {
        log: Some(&daemon_log),
        ..Default::default()
    };
    let m = Mount::start_with(&backing, &mnt, opts());
    let mut w = Workload {
        mnt: mnt.clone(),
        mark: OpenOptions::new()
            .write(true)
            .open(logfs.join("mark"))
            .unwrap(),
        events: Vec::new(),
        paths: Vec::new(),
        rng: Rng(seed),
    };
    w.run(&m);
    m.stop();
    td.unmount_ext4();
    drop(w.mark);
    drop(session);
    let log = std::mem::take(&mut disk.lock().unwrap().log);
    let flushes = log.iter().filter(|r| matches!(r, Rec::Flush)).count();
    let writes = log
        .iter()
        .filter(|r| matches!(r, Rec::Write { .. }))
        .count();
    eprintln!(
        "power-loss: seed {seed:#x}, {} events, {writes} writes and {flushes} flushes logged",
        w.events.len()
    );
    assert!(
        flushes > 10,
        "the loop device sent no flushes: nothing to test"
    );

    // Replay: each cut rebuilds the disk from the base image and the log.
    let mut rng = Rng(seed ^ 0x5eed);
    let cuts = choose_cuts(&log, &mut rng);
    let crash_img = root.path().join("crash.img");
    let mut img = base_img;
    let mut applied = 0;
    let mut failures = Vec::new();
    for (n, cut) in cuts.iter().enumerate() {
        for r in &log[applied..cut.upto] {
            apply(&mut img, r);
        }
        applied = cut.upto;
        let mut state = img.clone();
        for &i in &cut.extra {
            apply(&mut state, &log[i]);
        }
        std::fs::write(&crash_img, &state).unwrap();
        drop(state);
        let seen = marked(&log, cut);
        let want = expectations(&w.events[..seen]);
        let what = format!(
            "cut {n} ({}, record {} of {}, +{} out of order, after event {})",
            cut.why,
            cut.upto,
            log.len(),
            cut.extra.len(),
            seen as i64 - 1
        );
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "loop",
                crash_img.to_str().unwrap(),
                backing.to_str().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("{what}: ext4 does not mount: {e}"));
        td.ext4 = Some(backing.clone());
        let m = Mount::start_with(&backing, &mnt, opts());
        let errs = check(&mnt, &want);
        m.stop();
        td.unmount_ext4();
        if errs.is_empty() {
            eprintln!("power-loss: {what}: {} files ok", want.len());
        } else {
            failures.push(format!("{what}:\n    {}", errs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {} of {} cuts lost data:\n{}\ndaemon log:\n{}",
        failures.len(),
        cuts.len(),
        failures.join("\n"),
        std::fs::read_to_string(&daemon_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "power-loss: {} cuts, every acknowledged byte there",
        cuts.len()
    );
}
