//! Reference tests of the filesystem core (no FUSE, no model): random sequences of
//! create/write/truncate/rename/unlink/mkdir/read/compress run against the core over a
//! real temporary backing directory, and against an in-memory model of the tree. The
//! codec is a cheap stand-in (zstd in a fake header, tiny extents) — this tests the
//! layer above the codec; tests/fs_mount.rs runs the real model.

use nacrithfs_fs::core::{Allocate, Core, CoreConfig, Ino, Kind, SetAttr, ROOT_INO};
use nacrithfs_fs::store::{Backing, Caller, Codec, StandInCodec};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir,
    File(Vec<u8>),
}

/// Files over this size stay plaintext; the writes below make some of them.
const MAX_COMPRESS: u64 = 300;

const PATHS: &[&str] = &["a", "b", "d", "d/a", "d/b", "e", "e/c", "d/e"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    Mkdir(usize),
    Write(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Rename(usize, usize),
    Unlink(usize),
    Rmdir(usize),
    Read(usize),
    Compress,
    /// Write through a handle opened before the file was compressed.
    WriteAcrossCompress(usize, Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Create),
        2 => p.clone().prop_map(Op::Mkdir),
        // Bytes of a small alphabet: files long enough compress (a blob never replaces
        // plaintext it would not shrink, so random bytes would all stay plaintext).
        4 => (p.clone(), 0u16..300, proptest::collection::vec(0u8..4, 0..120)).prop_map(|(a, o, d)| Op::Write(a, o, d)),
        2 => (p.clone(), 0u16..200).prop_map(|(a, s)| Op::Truncate(a, s)),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => p.clone().prop_map(Op::Unlink),
        1 => p.clone().prop_map(Op::Rmdir),
        3 => p.clone().prop_map(Op::Read),
        2 => Just(Op::Compress),
        1 => (p, proptest::collection::vec(any::<u8>(), 1..40)).prop_map(|(a, d)| Op::WriteAcrossCompress(a, d)),
    ]
}

struct Harness {
    _dir: tempfile::TempDir,
    core: Arc<Core>,
    model: BTreeMap<String, Entry>,
}

fn split(p: &str) -> (&str, &str) {
    match p.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", p),
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Arc::new(StandInCodec::new(7)), 256)
    }

    /// A core over `codec`, caching `cache_bytes` of decoded pieces.
    fn with(codec: Arc<dyn Codec>, cache_bytes: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let backing = Backing::open(dir.path()).unwrap();
        let core = Core::new(
            backing,
            codec,
            CoreConfig {
                cache_bytes,
                // Reads in order also decode pieces ahead, in threads of their own.
                read_ahead: 4,
                max_compress_bytes: MAX_COMPRESS,
                settle: std::time::Duration::ZERO,
            },
        )
        .unwrap();
        Harness {
            _dir: dir,
            core: Arc::new(core),
            model: BTreeMap::new(),
        }
    }

    fn resolve(&self, path: &str) -> Option<Ino> {
        let mut ino = ROOT_INO;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            ino = self.core.lookup(ino, OsStr::new(c)).ok()?.ino;
        }
        Some(ino)
    }

    fn parent_ok(&self, path: &str) -> bool {
        let (d, _) = split(path);
        d.is_empty() || self.model.get(d) == Some(&Entry::Dir)
    }

    /// Creates file `name` at the root with `data` in it, as the calling user.
    fn create_with(&self, name: &str, data: &[u8]) -> nacrithfs_fs::core::Attr {
        // SAFETY: geteuid/getegid take nothing and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (a, fh, _) = self
            .core
            .create(
                ROOT_INO,
                OsStr::new(name),
                0o600,
                libc::O_RDWR,
                &Caller::user(uid, gid),
            )
            .unwrap();
        self.core.write(fh, 0, data).unwrap();
        self.core.release(fh);
        a
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let (fh, _) = self.core.open(ino, libc::O_RDONLY).unwrap();
        let mut out = Vec::new();
        loop {
            let chunk = self.core.read(fh, out.len() as u64, 50).unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        self.core.release(fh);
        out
    }

    /// Writes at `off` (at the end if `None`); with `across`, the queue is drained
    /// while the handle is open, which must not compress the file under the writer.
    fn write_file(&mut self, i: usize, off: Option<usize>, data: &[u8], across: bool) {
        let p = PATHS[i];
        let Some(ino) = self.resolve(p) else { return };
        let Some(Entry::File(content)) = self.model.get_mut(p) else {
            return;
        };
        let off = off.unwrap_or(content.len());
        let c = &self.core;
        let (fh, _) = c.open(ino, libc::O_RDWR).unwrap();
        if across {
            c.drain();
        }
        assert_eq!(c.write(fh, off as u64, data).unwrap() as usize, data.len());
        c.release(fh);
        // A write of nothing changes nothing, not even the size (POSIX pwrite).
        if data.is_empty() {
            return;
        }
        if content.len() < off + data.len() {
            content.resize(off + data.len(), 0);
        }
        content[off..off + data.len()].copy_from_slice(data);
    }

    fn apply(&mut self, op: &Op) {
        let c = self.core.clone();
        // SAFETY: geteuid/getegid take nothing and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        match op {
            Op::Create(i) => {
                let p = PATHS[*i];
                let (d, n) = split(p);
                let r = self.resolve(d).map(|pi| {
                    c.create(
                        pi,
                        OsStr::new(n),
                        0o644,
                        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                        &Caller::user(uid, gid),
                    )
                });
                if self.parent_ok(p) && !self.model.contains_key(p) {
                    let (_, fh, _) = r.expect("parent").expect("create");
                    c.release(fh);
                    self.model.insert(p.into(), Entry::File(Vec::new()));
                } else {
                    assert!(!matches!(r, Some(Ok(_))), "create {p} should fail");
                }
            }
            Op::Mkdir(i) => {
                let p = PATHS[*i];
                let (d, n) = split(p);
                let r = self
                    .resolve(d)
                    .map(|pi| c.mkdir(pi, OsStr::new(n), 0o755, &Caller::user(uid, gid)));
                if self.parent_ok(p) && !self.model.contains_key(p) {
                    assert_eq!(r.expect("parent").expect("mkdir").kind, Kind::Dir);
                    self.model.insert(p.into(), Entry::Dir);
                } else {
                    assert!(!matches!(r, Some(Ok(_))), "mkdir {p} should fail");
                }
            }
            Op::Write(i, off, data) => self.write_file(*i, Some(*off as usize), data, false),
            Op::WriteAcrossCompress(i, data) => self.write_file(*i, None, data, true),
            Op::Truncate(i, size) => {
                let p = PATHS[*i];
                if !matches!(self.model.get(p), Some(Entry::File(_))) {
                    return;
                }
                let ino = self.resolve(p).expect("file exists");
                let Some(Entry::File(content)) = self.model.get_mut(p) else {
                    return;
                };
                let a = c
                    .setattr(
                        ino,
                        &SetAttr {
                            size: Some(*size as u64),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert_eq!(a.size, *size as u64);
                content.resize(*size as usize, 0);
            }
            Op::Rename(a, b) => {
                let (pa, pb) = (PATHS[*a], PATHS[*b]);
                // Only the cases whose outcome is simple to model.
                let src_file = matches!(self.model.get(pa), Some(Entry::File(_)));
                let src_dir = self.model.get(pa) == Some(&Entry::Dir);
                let dst = self.model.get(pb).cloned();
                let ok = self.parent_ok(pb)
                    && pa != pb
                    && ((src_file && !matches!(dst, Some(Entry::Dir)))
                        || (src_dir && dst.is_none() && !pb.starts_with(&format!("{pa}/"))));
                if !ok {
                    return;
                }
                let ((da, na), (db, nb)) = (split(pa), split(pb));
                let (ia, ib) = (self.resolve(da).unwrap(), self.resolve(db).unwrap());
                c.rename(ia, OsStr::new(na), ib, OsStr::new(nb), 0)
                    .expect("rename");
                let moved: Vec<(String, Entry)> = self
                    .model
                    .iter()
                    .filter(|(k, _)| *k == pa || k.starts_with(&format!("{pa}/")))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, _) in &moved {
                    self.model.remove(k);
                }
                for (k, v) in moved {
                    self.model.insert(format!("{pb}{}", &k[pa.len()..]), v);
                }
            }
            Op::Unlink(i) => {
                let p = PATHS[*i];
                let (d, n) = split(p);
                let r = self.resolve(d).map(|pi| c.unlink(pi, OsStr::new(n)));
                if matches!(self.model.get(p), Some(Entry::File(_))) {
                    r.unwrap().expect("unlink");
                    self.model.remove(p);
                } else {
                    assert!(!matches!(r, Some(Ok(_))), "unlink {p} should fail");
                }
            }
            Op::Rmdir(i) => {
                let p = PATHS[*i];
                let (d, n) = split(p);
                let r = self.resolve(d).map(|pi| c.rmdir(pi, OsStr::new(n)));
                let empty = !self.model.keys().any(|k| k.starts_with(&format!("{p}/")));
                if self.model.get(p) == Some(&Entry::Dir) && empty {
                    r.unwrap().expect("rmdir");
                    self.model.remove(p);
                } else {
                    assert!(!matches!(r, Some(Ok(_))), "rmdir {p} should fail");
                }
            }
            Op::Read(i) => {
                let p = PATHS[*i];
                match self.model.get(p) {
                    Some(Entry::File(content)) => {
                        let ino = self.resolve(p).unwrap();
                        assert_eq!(
                            c.getattr(ino).unwrap().size,
                            content.len() as u64,
                            "size of {p}"
                        );
                        assert_eq!(&self.read_all(ino), content, "content of {p}");
                    }
                    Some(Entry::Dir) => {
                        assert_eq!(c.getattr(self.resolve(p).unwrap()).unwrap().kind, Kind::Dir)
                    }
                    None => assert!(self.resolve(p).is_none(), "{p} should not exist"),
                }
            }
            Op::Compress => {
                c.drain();
                let st = c.status();
                assert_eq!(
                    (st.queued, st.compressing, st.writing, st.failed),
                    (0, 0, 0, 0)
                );
            }
        }
    }

    fn check_all(&self) {
        for (p, e) in &self.model {
            let ino = self.resolve(p).unwrap_or_else(|| panic!("{p} missing"));
            if let Entry::File(content) = e {
                assert_eq!(&self.read_all(ino), content, "content of {p}");
                assert_eq!(self.core.getattr(ino).unwrap().size, content.len() as u64);
            }
        }
        // Listings match the model, and never show internal state.
        for dir in std::iter::once("").chain(
            self.model
                .iter()
                .filter(|(_, e)| **e == Entry::Dir)
                .map(|(k, _)| k.as_str()),
        ) {
            let ino = self.resolve(dir).unwrap();
            let fh = self.core.opendir(ino).unwrap();
            let mut got: Vec<String> = self
                .core
                .readdir(fh, 0)
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.name.to_string_lossy().into_owned())
                .filter(|n| n != "." && n != "..")
                .collect();
            self.core.releasedir(fh);
            got.sort();
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let want: Vec<String> = self
                .model
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|r| !r.is_empty() && !r.contains('/'))
                .map(String::from)
                .collect();
            assert_eq!(got, want, "listing of {dir:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn core_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
        }
        h.check_all();
        h.apply(&Op::Compress);
        h.check_all();
        // Every file that a blob makes smaller is a blob now, the others plaintext
        // (files under 64 bytes or over the maximum are never compressed); the marker
        // is hidden.
        let codec = StandInCodec::new(7);
        for (p, e) in &h.model {
            if let Entry::File(content) = e {
                let ino = h.resolve(p).unwrap();
                let xattrs = h.core.listxattr(ino).unwrap();
                prop_assert!(!String::from_utf8_lossy(&xattrs).contains("nacrithfs"));
                let raw = std::fs::read(h.core.backing().path(std::path::Path::new(p))).unwrap();
                let shrinks = content.len() >= 64
                    && content.len() as u64 <= MAX_COMPRESS
                    && codec.blob_of(content).unwrap().len() < content.len();
                prop_assert_eq!(raw.starts_with(b"FAKE"), shrinks, "{} stored state", p);
            }
        }
    }
}

#[test]
fn hidden_names_and_unlink_while_open() {
    let h = Harness::new();
    let c = &h.core;
    assert!(c.lookup(ROOT_INO, OsStr::new(".nacrithfs")).is_err());
    assert!(c
        .mkdir(ROOT_INO, OsStr::new(".nacrithfs"), 0o755, &Caller::ROOT)
        .is_err());
    assert!(c
        .setxattr(ROOT_INO, OsStr::new("user.nacrithfs.state"), b"nc06", 0)
        .is_err());
    // SAFETY: geteuid/getegid take nothing and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (a, fh, _) = c
        .create(
            ROOT_INO,
            OsStr::new("f"),
            0o600,
            libc::O_RDWR,
            &Caller::user(uid, gid),
        )
        .unwrap();
    let content = [&b"hello world"[..], &[0u8; 200]].concat();
    c.write(fh, 0, &content).unwrap();
    c.release(fh);
    c.drain();
    assert_eq!(c.status().compressed, 1);
    // Opened compressed, unlinked, still readable; a hard link keeps the inode, and
    // makes the file plaintext first, so that a blob always has one link.
    let (fh, reply) = c.open(a.ino, libc::O_RDONLY).unwrap();
    assert!(reply.keep_cache);
    let l = c.link(a.ino, ROOT_INO, OsStr::new("g")).unwrap();
    assert_eq!((l.ino, l.nlink), (a.ino, 2));
    for n in ["f", "g"] {
        let p = h.core.backing().path(std::path::Path::new(n));
        assert!(
            !nacrithfs_fs::store::backing::is_blob_path(&p).unwrap(),
            "{n}"
        );
    }
    c.unlink(ROOT_INO, OsStr::new("f")).unwrap();
    c.unlink(ROOT_INO, OsStr::new("g")).unwrap();
    assert_eq!(c.read(fh, 6, 5).unwrap(), b"world");
    c.release(fh);
    // A recovery queues plaintext left behind and deletes temporary files.
    std::fs::write(
        h.core.backing().path(std::path::Path::new("plain")),
        b"left over".repeat(20),
    )
    .unwrap();
    std::fs::write(
        h.core.backing().root().join(".nacrithfs/tmp/junk.tmp"),
        b"x",
    )
    .unwrap();
    assert_eq!(c.recover().unwrap(), (1, 1));
    c.drain();
    let ino = h.resolve("plain").unwrap();
    assert_eq!(h.read_all(ino), b"left over".repeat(20));
    assert!(
        std::fs::read(h.core.backing().path(std::path::Path::new("plain")))
            .unwrap()
            .starts_with(b"FAKE")
    );
}

#[test]
fn bad_handles_are_ebadf_and_errors_name_the_file() {
    let h = Harness::new();
    let c = &h.core;
    assert_eq!(c.fsync(12345, false).unwrap_err().errno(), libc::EBADF);
    assert_eq!(c.read(12345, 0, 10).unwrap_err().errno(), libc::EBADF);
    assert_eq!(c.write(12345, 0, b"x").unwrap_err().errno(), libc::EBADF);
    c.mkdir(ROOT_INO, OsStr::new("dir-x"), 0o755, &Caller::ROOT)
        .unwrap();
    let e = c
        .mkdir(ROOT_INO, OsStr::new("dir-x"), 0o755, &Caller::ROOT)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    assert!(e.to_string().contains("dir-x"), "{e}");
    // A read-only handle cannot write, and fsync of an open file is fine.
    // SAFETY: geteuid/getegid take nothing and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (a, fh, _) = c
        .create(
            ROOT_INO,
            OsStr::new("f"),
            0o600,
            libc::O_RDWR,
            &Caller::user(uid, gid),
        )
        .unwrap();
    c.fsync(fh, true).unwrap();
    c.release(fh);
    let (fh, _) = c.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(c.write(fh, 0, b"x").unwrap_err().errno(), libc::EBADF);
    c.release(fh);
}

/// Writes, appends and truncates of a compressed file go to its overlay log: the
/// backing file stays a blob (marked as logged) until the compressor folds the changes
/// into a new blob; reads, sizes, recovery and a fold into plaintext all see them.
#[test]
fn changes_to_a_compressed_file_go_to_its_overlay_log() {
    let h = Harness::new();
    let c = &h.core;
    let mut model = b"line of a log file\n".repeat(12);
    let a = h.create_with("log", &model);
    c.drain();
    let path = h.core.backing().path(std::path::Path::new("log"));
    let state = |p: &std::path::Path| {
        nacrithfs_fs::store::xattr::lget_xattr(p, OsStr::new("user.nacrithfs.state")).unwrap()
    };
    assert_eq!(state(&path).as_deref(), Some(&b"nc06"[..]));
    let blob_len = std::fs::metadata(&path).unwrap().len();

    // An append, an overwrite and a truncate through one handle.
    let (fh, _) = c.open(a.ino, libc::O_RDWR).unwrap();
    c.write(fh, model.len() as u64, b"appended\n").unwrap();
    model.extend_from_slice(b"appended\n");
    c.write(fh, 5, b"OF").unwrap();
    model[5..7].copy_from_slice(b"OF");
    c.setattr(
        a.ino,
        &SetAttr {
            size: Some(200),
            ..Default::default()
        },
    )
    .unwrap();
    model.resize(200, 0);
    assert_eq!(state(&path).as_deref(), Some(&b"nc06+log"[..]));
    assert!(std::fs::metadata(&path).unwrap().len() > blob_len);
    assert!(std::fs::read(&path).unwrap().starts_with(b"FAKE"));
    assert_eq!(c.getattr(a.ino).unwrap().size, 200);
    assert_eq!(h.read_all(a.ino), model);
    c.release(fh);
    // Closed: the size comes from replaying the log.
    assert_eq!(c.getattr(a.ino).unwrap().size, 200);

    // A recovery (as after a crash) queues the logged file; its new blob has no log.
    assert_eq!(c.recover().unwrap().1, 1);
    c.drain();
    assert_eq!(state(&path).as_deref(), Some(&b"nc06"[..]));
    assert_eq!(h.read_all(a.ino), model);

    // A hard link folds the log into plaintext first.
    let (fh, _) = c.open(a.ino, libc::O_WRONLY).unwrap();
    c.write(fh, 0, b"X").unwrap();
    model[0] = b'X';
    c.release(fh);
    c.link(a.ino, ROOT_INO, OsStr::new("log2")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), model);
    assert_eq!(h.read_all(a.ino), model);
}

/// `truncate -s 1T` of a compressed file is one log record, and the plaintext it folds
/// into (it is over the size the mount compresses) is sparse: no terabyte of zeros.
#[test]
fn a_compressed_file_extended_to_a_terabyte_costs_no_disk() {
    let h = Harness::new();
    let c = &h.core;
    let text = b"compressible text ".repeat(10);
    let a = h.create_with("big", &text);
    c.drain();
    let path = h.core.backing().path(std::path::Path::new("big"));
    assert!(std::fs::read(&path).unwrap().starts_with(b"FAKE"));
    let tb = 1u64 << 40;
    c.setattr(
        a.ino,
        &SetAttr {
            size: Some(tb),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.getattr(a.ino).unwrap().size, tb);
    let (fh, _) = c.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(fh, tb - 4, 100).unwrap(), vec![0; 4]);
    assert_eq!(c.read(fh, 0, text.len() as u32).unwrap(), text);
    c.release(fh);
    c.drain();
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), tb);
    assert!(md.blocks() < 1024, "{} blocks", md.blocks());
    let (fh, _) = c.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(fh, 0, text.len() as u32).unwrap(), text);
    c.release(fh);
}

/// `getattr` while the file's backing inode keeps changing between blob and plaintext
/// (a `link` folds the blob into plaintext, renamed over its name; a compression
/// renames a blob over the plaintext): the size is always the file's, never the raw
/// length of the blob's backing file read beside the marker of the plaintext that
/// replaced it.
#[test]
fn getattr_sees_one_file_while_the_name_changes_hands() {
    let h = Harness::new();
    // Under MAX_COMPRESS, and compressible: a blob after every compression.
    let data: Vec<u8> = b"a line that compresses. ".repeat(10);
    let ino = h.create_with("f", &data).ino;
    h.core.drain();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let core = h.core.clone();
        let stop = &stop;
        let want = data.len() as u64;
        let watcher = s.spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A missing entry is fine (the link's name comes and goes); a wrong
                // size is not.
                if let Ok(a) = core.getattr(ino) {
                    assert_eq!(a.size, want, "getattr after {n} calls");
                }
                n += 1;
            }
            n
        });
        for _ in 0..300 {
            h.core.link(ino, ROOT_INO, OsStr::new("g")).unwrap();
            h.core.unlink(ROOT_INO, OsStr::new("g")).unwrap();
            // The last writer's close queues it; the compression makes it a blob again.
            let (fh, _) = h.core.open(ino, libc::O_WRONLY).unwrap();
            h.core.release(fh);
            h.core.drain();
        }
        assert!(h.core.status().compressed >= 300, "{:?}", h.core.status());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(watcher.join().unwrap() > 0);
    });
    assert_eq!(h.read_all(ino), data);
}

/// A gate for the stand-in codec's decodes: once armed, the next decode waits until
/// the test opens it, so the core's own operations can run while a compressor is in
/// the middle of one.
#[derive(Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    /// (a decode is waiting at the gate, the test opened it)
    state: std::sync::Mutex<(bool, bool)>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn pass(&self) {
        if !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.cv.notify_all();
        while !s.1 {
            s = self.cv.wait(s).unwrap();
        }
    }

    fn wait_entered(&self) {
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            s = self.cv.wait(s).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

/// A compressor folds a compressed file into plaintext (truncated below what is worth
/// compressing) while a reader comes and goes and a writer opens the file and writes:
/// the fold must not install the plaintext it decoded before that write. (The content
/// the fold started from was let go with the reader, and the writer's is a new one
/// over the same blob; found by tests/fsx.rs in CI as a lost write.)
#[test]
fn a_fold_into_plaintext_keeps_a_write_made_meanwhile() {
    let gate = Arc::new(Gate::default());
    let codec = StandInCodec {
        extent: 7,
        before_decode: Some(Arc::new({
            let gate = gate.clone();
            move || gate.pass()
        })),
    };
    // Nothing cached: the fold decodes, and waits at the gate.
    let h = Harness::with(Arc::new(codec), 0);
    let c = &h.core;
    let a = h.create_with("f", &b"compressible ".repeat(20));
    c.drain();
    let path = c.backing().path(std::path::Path::new("f"));
    assert!(std::fs::read(&path).unwrap().starts_with(b"FAKE"));
    // Truncated by path: a record in the log, and too small to compress again.
    c.setattr(
        a.ino,
        &SetAttr {
            size: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let compressor = s.spawn(|| c.drain());
        gate.wait_entered();
        let (r, _) = c.open(a.ino, libc::O_RDONLY).unwrap();
        c.release(r);
        let (w, _) = c.open(a.ino, libc::O_RDWR).unwrap();
        c.write(w, 0, b"0123456789").unwrap();
        gate.open();
        compressor.join().unwrap();
        assert_eq!(h.read_all(a.ino), b"0123456789");
        c.release(w);
    });
    c.drain();
    assert_eq!(h.read_all(a.ino), b"0123456789");
    assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
}

/// One writer changes a file through handles and by path (truncating it below what is
/// worth compressing now and then, so the compressor folds it into plaintext), while
/// the compressor runs all along and two readers open, read and close it without
/// pause. Every read of the writer sees exactly what it wrote, and so does the file at
/// the end. Races between a compression or a fold and the contents that handles load
/// and let go show here as lost writes.
#[test]
fn a_writer_keeps_every_byte_while_readers_and_the_compressor_race_it() {
    let h = Harness::new();
    let c = &h.core;
    let ino = h.create_with("f", &[b'a'; 100]).ino;
    let mut model = vec![b'a'; 100];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rng = 0x5eed_u64;
    let mut next = move |n: u64| {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    /// Stops the readers and the compressor however the writer ends (a failed
    /// assertion too, or the scope would wait for them forever).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.drain();
                std::thread::yield_now();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                // From every offset up to past the largest size: a read must never
                // fail (or panic) whatever the file's size is by then.
                let mut off = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((fh, _)) = c.open(ino, libc::O_RDONLY) {
                        c.read(fh, off, 400).unwrap();
                        c.release(fh);
                    }
                    off = (off + 37) % 400;
                }
            });
        }
        let mut fh = None;
        let t0 = std::time::Instant::now();
        // The readers spin on the table lock and slow the compressor down (a mutex
        // is not fair): that widens the races, and the run ends by time, too.
        for i in 0..3000 {
            if t0.elapsed() > std::time::Duration::from_secs(8) {
                break;
            }
            match next(12) {
                0..=4 => {
                    let w = *fh.get_or_insert_with(|| c.open(ino, libc::O_RDWR).unwrap().0);
                    // Under MAX_COMPRESS: the file stays worth compressing.
                    let off = next(model.len().min(200) as u64 + 20) as usize;
                    let data = vec![b"xyz"[next(3) as usize]; 1 + next(60) as usize];
                    assert_eq!(c.write(w, off as u64, &data).unwrap() as usize, data.len());
                    if model.len() < off + data.len() {
                        model.resize(off + data.len(), 0);
                    }
                    model[off..off + data.len()].copy_from_slice(&data);
                }
                10 => {
                    // A hard link folds a compressed file into plaintext on this
                    // thread, racing the compressor's own folds and commits.
                    c.link(ino, ROOT_INO, OsStr::new("g")).unwrap();
                    let g = c.backing().path(std::path::Path::new("g"));
                    let raw = std::fs::read(g).unwrap();
                    assert!(!raw.starts_with(b"FAKE"), "a blob with two links ({i})");
                    c.unlink(ROOT_INO, OsStr::new("g")).unwrap();
                }
                11 => {
                    let w = *fh.get_or_insert_with(|| c.open(ino, libc::O_RDWR).unwrap().0);
                    let (off, len) = (next(250), 1 + next(80));
                    c.fallocate(w, off, len, Allocate::PunchHole).unwrap();
                    let to = ((off + len) as usize).min(model.len());
                    if (off as usize) < to {
                        model[off as usize..to].fill(0);
                    }
                }
                5 => {
                    let size = if next(2) == 0 { next(64) } else { next(250) };
                    c.setattr(
                        ino,
                        &SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    model.resize(size as usize, 0);
                }
                6 | 7 => {
                    if let Some(w) = fh.take() {
                        c.release(w);
                        // Now and then the next change comes once the compressor has
                        // started on the file (not after it is done): then they race.
                        if next(2) == 0 {
                            while c.status().queued > 0 {
                                std::thread::yield_now();
                            }
                        }
                    }
                }
                _ => {
                    let got = match fh {
                        Some(w) => c.read(w, 0, 400).unwrap(),
                        None => h.read_all(ino),
                    };
                    assert_eq!(got, model, "read {i}");
                }
            }
        }
        if let Some(w) = fh.take() {
            c.release(w);
        }
    });
    c.drain();
    assert_eq!(h.read_all(ino), model);
    assert!(c.status().compressed > 0, "{:?}", c.status());
}
