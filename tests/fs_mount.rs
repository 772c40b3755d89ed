//! The real filesystem: the `nacrithfs` binary mounted with FUSE over a temporary
//! backing directory, with the real model. Needs root and /dev/fuse (as CI has); a
//! missing model fails loudly (CI fetches it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ENGLISH: &str = include_str!("data/english.txt");
const MULTILINGUAL: &str = include_str!("data/multilingual.txt");

#[path = "common/mount.rs"]
mod mount;

use mount::{bin, force_unmount, is_mountpoint, Mount, Opts, SERIAL};

fn model_present() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh (the fs tests need the real model)");
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    mount::Rng(seed).bytes(n)
}

struct Dirs {
    _root: tempfile::TempDir,
    src: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let (src, backing, mnt) = (
        root.path().join("src"),
        root.path().join("backing"),
        root.path().join("mnt"),
    );
    for d in [&src, &backing, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    Dirs {
        _root: root,
        src,
        backing,
        mnt,
    }
}

fn cut(s: &str, n: usize) -> &str {
    let mut n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn diff(a: &Path, b: &Path) {
    let out = sh(
        "diff",
        &[
            "-r",
            "--no-dereference",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "diff -r --no-dereference {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn head4(p: &Path) -> Vec<u8> {
    let mut b = std::fs::read(p).unwrap();
    b.truncate(4);
    b
}

#[test]
fn copy_compress_remount_and_modify() {
    model_present();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let tree = d.src.join("tree");
    std::fs::create_dir_all(tree.join("docs/deep/er")).unwrap();
    std::fs::write(tree.join("docs/english.txt"), cut(ENGLISH, 700)).unwrap();
    std::fs::write(tree.join("docs/deep/utf8.txt"), cut(MULTILINGUAL, 250)).unwrap();
    std::fs::write(tree.join("noise.bin"), noise(1500, 7)).unwrap();
    std::fs::write(tree.join("docs/deep/er/empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/english.txt", tree.join("link")).unwrap();

    let m = Mount::start(&d.backing, &d.mnt);
    assert!(sh(
        "cp",
        &["-a", tree.to_str().unwrap(), d.mnt.to_str().unwrap()]
    )
    .status
    .success());
    let mtree = d.mnt.join("tree");
    diff(&tree, &mtree);
    // Internal state is unreachable through the mount.
    assert!(!d.mnt.join(".nacrithfs").exists());
    assert!(std::fs::create_dir(d.mnt.join(".nacrithfs")).is_err());
    let names: Vec<_> = std::fs::read_dir(&d.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tree")]);
    let summary = m.wait();
    eprintln!("after cp: {summary}");

    let btree = d.backing.join("tree");
    for f in ["docs/english.txt", "docs/deep/utf8.txt"] {
        assert_eq!(head4(&btree.join(f)), b"NC06", "{f} is not a blob");
    }
    // Noise would only grow: it is kept as it is, and marked so.
    assert!(
        nacrithfs_fs::store::backing::is_kept_plain_path(&btree.join("noise.bin")).unwrap(),
        "noise.bin is not kept plain"
    );
    for f in ["docs/english.txt", "docs/deep/utf8.txt"] {
        let (orig, stored) = (
            std::fs::metadata(tree.join(f)).unwrap().len(),
            std::fs::metadata(btree.join(f)).unwrap().len(),
        );
        assert!(
            stored < orig,
            "{f}: blob {stored} bytes is not smaller than {orig}"
        );
        assert_eq!(
            std::fs::metadata(mtree.join(f)).unwrap().len(),
            orig,
            "{f}: size through the mount"
        );
    }
    assert_eq!(
        std::fs::metadata(btree.join("docs/deep/er/empty"))
            .unwrap()
            .len(),
        0
    );
    diff(&tree, &mtree);
    m.stop();

    // Cold: a new daemon decodes from the blobs; two readers at once.
    let m = Mount::start(&d.backing, &d.mnt);
    let en = mtree.join("docs/english.txt");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let p = en.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), cut(ENGLISH, 700).as_bytes());
    }
    diff(&tree, &mtree);

    // Modify compressed files, mirroring every change in the source tree.
    let both = |f: &dyn Fn(&Path)| {
        f(&tree);
        f(&mtree);
    };
    both(&|t| std::fs::create_dir(t.join("moved")).unwrap());
    both(&|t| std::fs::rename(t.join("docs/deep/utf8.txt"), t.join("moved/utf8.txt")).unwrap());
    both(&|t| std::fs::rename(t.join("noise.bin"), t.join("docs/english.txt")).unwrap()); // over an existing file
    both(&|t| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(t.join("moved/utf8.txt"))
            .unwrap();
        f.set_len(100).unwrap();
    });
    both(&|t| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(t.join("moved/utf8.txt"))
            .unwrap();
        f.write_all(b"\nappended line\n").unwrap();
    });
    // Unlink while open: the data stays readable through the open file.
    {
        use std::io::Read;
        let mut f = std::fs::File::open(mtree.join("docs/english.txt")).unwrap();
        std::fs::remove_file(mtree.join("docs/english.txt")).unwrap();
        std::fs::remove_file(tree.join("docs/english.txt")).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, noise(1500, 7));
    }
    // Hard links share an inode and count right.
    both(&|t| std::fs::hard_link(t.join("moved/utf8.txt"), t.join("hard")).unwrap());
    let (a, b) = (
        std::fs::metadata(mtree.join("moved/utf8.txt")).unwrap(),
        std::fs::metadata(mtree.join("hard")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    both(&|t| std::fs::remove_file(t.join("hard")).unwrap());
    assert_eq!(
        std::fs::metadata(mtree.join("moved/utf8.txt"))
            .unwrap()
            .nlink(),
        1
    );
    diff(&tree, &mtree);
    m.wait();
    assert_eq!(head4(&btree.join("moved/utf8.txt")), b"NC06");
    m.stop();

    let m = Mount::start(&d.backing, &d.mnt);
    diff(&tree, &mtree);
    m.stop();
}

/// A reader that reads a compressed file in order has the text chunks after its read
/// decoded ahead, in the background, before it asks for them. Here the first page read
/// (of a 64 KiB hole) starts the decode of every text chunk after it, and the reads of
/// the text find them decoded or wait for that decode: each chunk is decoded once.
#[test]
fn a_reader_in_order_finds_the_next_chunks_decoded_ahead() {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    model_present();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let mut want = vec![0u8; nc06::format::MIN_ZERO_RUN];
    want.extend_from_slice(ENGLISH.as_bytes());
    let opts = || Opts {
        args: vec!["--chunk-size", "128"],
        ..Default::default()
    };
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    std::fs::write(d.mnt.join("gap.txt"), &want).unwrap();
    m.wait();
    m.stop();
    let blob = nc06::format::Blob::parse(&std::fs::read(d.backing.join("gap.txt")).unwrap())
        .expect("gap.txt is a blob");
    let texts = blob.chunks.len() as u64;
    assert!(texts >= 5, "{texts} text chunks");

    // A fresh mount, with the kernel's own read-ahead off for the file: each pread of
    // a page is one read of the filesystem, in order.
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    let f = std::fs::File::open(d.mnt.join("gap.txt")).unwrap();
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0);
    let mut got = Vec::new();
    let mut page = vec![0u8; 4096];
    loop {
        let n = f.read_at(&mut page, got.len() as u64).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&page[..n]);
    }
    drop(f);
    assert!(got == want, "read back differs");
    let st = nacrithfs_fs::Status::from_json(&m.status()).expect("status");
    assert_eq!(
        st.model_decodes, texts,
        "a text chunk was decoded more than once"
    );
    assert_eq!(
        st.read_ahead, texts,
        "not every text chunk was decoded ahead"
    );
    m.stop();
}

#[test]
fn a_file_read_back_after_its_compression_needs_no_model() {
    // cp, then diff once the kernel's page cache has let the file go: what was just
    // coded is cached as decoded, from the plaintext (each piece checked against the
    // blob's checksum of it), so reading it back does not run the model at about
    // 1 KB/s. A fresh mount decodes it.
    model_present();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let mut want = ENGLISH.as_bytes().to_vec();
    want.extend_from_slice(&noise(3000, 11));
    want.extend_from_slice(MULTILINGUAL.as_bytes());
    let opts = || Opts {
        args: vec!["--chunk-size", "256"],
        ..Default::default()
    };
    // O_DIRECT: every read goes to the filesystem, none to the kernel's page cache
    // (which holds the pages cp wrote).
    let read_direct = |p: &Path| {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    };
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    std::fs::write(d.mnt.join("a.txt"), &want).unwrap();
    m.wait();
    let blob = nc06::format::Blob::parse(&std::fs::read(d.backing.join("a.txt")).unwrap())
        .expect("a.txt is a blob");
    assert!(blob.chunks.len() >= 4, "{} text chunks", blob.chunks.len());
    assert!(
        read_direct(&d.mnt.join("a.txt")) == want,
        "read back differs"
    );
    let st = nacrithfs_fs::Status::from_json(&m.status()).expect("status");
    assert_eq!(
        st.model_decodes, 0,
        "a chunk just coded was decoded to read it back"
    );
    m.stop();
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    assert!(
        read_direct(&d.mnt.join("a.txt")) == want,
        "read back differs"
    );
    let st = nacrithfs_fs::Status::from_json(&m.status()).expect("status");
    assert_eq!(st.model_decodes, blob.chunks.len() as u64);
    m.stop();
}

#[test]
fn a_file_written_again_and_again_is_compressed_once_it_is_left_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            args: vec!["--settle-ms", "1500"],
            ..Default::default()
        },
    );
    // A log of binary records (the fast codec), one open-append-close every 200 ms:
    // each close used to start a compression that the next change made stale.
    let log = d.mnt.join("app.log");
    let mut want = Vec::new();
    for i in 0..6u8 {
        // Bytes 0x80..=0xbf only: never UTF-8, so never text for the model.
        let record: Vec<u8> = (0..64 << 10)
            .map(|j: u32| 0x80 | ((j % 61) as u8 ^ i))
            .collect();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::io::Write::write_all(&mut f, &record).unwrap();
        drop(f);
        want.extend(record);
        std::thread::sleep(Duration::from_millis(200));
        let st = nacrithfs_fs::Status::from_json(&m.status()).expect("status");
        assert_eq!(st.compressed, 0, "compressed before the writes stopped");
        assert_eq!(st.queued, 1, "the log waits to settle, counted as queued");
    }
    m.wait();
    let st = nacrithfs_fs::Status::from_json(&m.status()).expect("status");
    assert_eq!(st.compressed, 1, "one compression for the whole burst");
    assert_eq!(head4(&d.backing.join("app.log")), b"NC06");
    assert!(std::fs::read(&log).unwrap() == want, "read back differs");
    m.stop();
}

#[test]
fn kill_9_while_compressing_then_recover() {
    model_present();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let text = cut(ENGLISH, 700);
    let m = Mount::start(&d.backing, &d.mnt);
    std::fs::write(d.mnt.join("a.txt"), text).unwrap();
    std::fs::write(d.mnt.join("b.txt"), cut(MULTILINGUAL, 250)).unwrap();
    std::fs::write(d.src.join("a.txt"), text).unwrap();
    std::fs::write(d.src.join("b.txt"), cut(MULTILINGUAL, 250)).unwrap();
    // Kill as soon as a compression is under way.
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(d.mnt.join(".nacrithfs-status")).unwrap();
        if s.contains("\"compressing\":1") || t.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    force_unmount(&d.mnt);
    drop(m);
    assert!(!is_mountpoint(&d.mnt));

    let m = Mount::start(&d.backing, &d.mnt);
    diff(&d.src, &d.mnt);
    m.wait();
    for f in ["a.txt", "b.txt"] {
        assert_eq!(head4(&d.backing.join(f)), b"NC06");
    }
    let tmp = std::fs::read_dir(d.backing.join(".nacrithfs/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "temporary files left behind");
    m.stop();
    let m = Mount::start(&d.backing, &d.mnt);
    diff(&d.src, &d.mnt);
    m.stop();
}

#[test]
fn mount_refuses_bad_setups() {
    model_present();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = dirs();
    let one_line_failure = |args: &[&str], what: &str| {
        let out = bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(err.starts_with("nacrithfs: "), "{what}: {err}");
    };
    let (b, mnt) = (d.backing.to_str().unwrap(), d.mnt.to_str().unwrap());
    one_line_failure(&["mount", "/nonexistent/backing", mnt], "missing backing");
    std::fs::write(d.src.join("x"), b"x").unwrap();
    one_line_failure(
        &["mount", b, d.src.to_str().unwrap()],
        "non-empty mount point",
    );
    one_line_failure(
        &["mount", b, mnt, "--model", "/nonexistent/model.gguf"],
        "missing model",
    );
    let m = Mount::start(&d.backing, &d.mnt);
    one_line_failure(&["mount", b, mnt], "busy mount point");
    one_line_failure(
        &["status", d.src.to_str().unwrap()],
        "status of a non-mount",
    );
    let out = bin().args(["status", mnt]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 0"));
    m.stop();
}
