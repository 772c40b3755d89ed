//! Faults, against a live mount (real daemon, real model): a full backing disk, damaged
//! blobs, a model swapped after files were compressed, an unusable model at mount time.
//! What must hold: the error the caller gets is the right errno (ENOSPC, EIO), the
//! daemon log names the file, nothing is ever returned as wrong bytes, and the rest of
//! the mount keeps working.

#[path = "common/mount.rs"]
mod mount;

use mount::{bin, dirs, serial, Mount, Opts, Rng, Tmpfs};
use nacrithfs_fs::store::backing::is_blob_path;
use nc06::format::FRAME_SIZE;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

const ENGLISH: &str = include_str!("data/english.txt");

fn model_path() -> std::path::PathBuf {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh")
}

fn text(n: usize) -> Vec<u8> {
    let mut end = n;
    while !ENGLISH.is_char_boundary(end) {
        end -= 1;
    }
    ENGLISH.as_bytes()[..end].to_vec()
}

/// Half random bytes, half runs of a non-text byte: compressible, never text.
fn binary(rng: &mut Rng, n: usize) -> Vec<u8> {
    rng.binary(n, 512, |_| 0x80)
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn full_backing_disk_gives_enospc_and_keeps_the_plaintext() {
    model_path();
    let _g = serial();
    let d = dirs();
    let _fs = Tmpfs::mount(&d.backing, "4m");
    let log = d.root.path().join("daemon.log");
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            log: Some(&log),
            ..Default::default()
        },
    );
    let mut rng = Rng(42);
    let keep = binary(&mut rng, 300_000);
    std::fs::write(d.mnt.join("keep.bin"), &keep).unwrap();
    m.wait();
    assert!(is_blob_path(&d.backing.join("keep.bin")).unwrap());

    // Fill the disk through the mount: every write lands whole or short, then ENOSPC.
    // Compressible, so that its compression needs room for a (smaller) blob.
    let planned = binary(&mut rng, 8 << 20);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(d.mnt.join("big.bin"))
        .unwrap();
    let mut acked = 0usize;
    let err = loop {
        match f.write(&planned[acked..(acked + 65536).min(planned.len())]) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => acked += n,
            Err(e) => break e,
        }
        assert!(acked < planned.len(), "4 MiB tmpfs took 8 MiB");
    };
    assert_eq!(
        errno(&err),
        libc::ENOSPC,
        "a full disk must give ENOSPC, got {err}"
    );
    drop(f);
    // Compressing big.bin needs room for its blob: it fails and the plaintext stays.
    m.wait();
    let status = m.status();
    assert!(
        !status.contains("\"failed\":0"),
        "compression should have failed: {status}"
    );
    assert!(
        !is_blob_path(&d.backing.join("big.bin")).unwrap(),
        "big.bin should stay plaintext"
    );
    let got = std::fs::read(d.mnt.join("big.bin")).unwrap();
    assert_eq!(
        got.len(),
        acked,
        "big.bin: every acknowledged byte and nothing else"
    );
    assert!(got == planned[..acked], "big.bin content");
    // A write into a compressed file needs room for its overlay log record only: one
    // that does not fit gets ENOSPC, all of it or nothing, and the blob is intact.
    let k = OpenOptions::new()
        .write(true)
        .open(d.mnt.join("keep.bin"))
        .unwrap();
    let e = k.write_at(&vec![b'x'; 128 << 10], 10).unwrap_err();
    assert_eq!(
        errno(&e),
        libc::ENOSPC,
        "write into a blob on a full disk: {e}"
    );
    drop(k);
    assert!(
        std::fs::read(d.mnt.join("keep.bin")).unwrap() == keep,
        "keep.bin changed"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("big.bin: compression failed"),
        "no log line names big.bin"
    );
    // Room again: everything works.
    std::fs::remove_file(d.mnt.join("big.bin")).unwrap();
    let k = OpenOptions::new()
        .write(true)
        .open(d.mnt.join("keep.bin"))
        .unwrap();
    k.write_all_at(b"x", 10).unwrap();
    drop(k);
    let mut keep2 = keep.clone();
    keep2[10] = b'x';
    m.wait();
    assert!(is_blob_path(&d.backing.join("keep.bin")).unwrap());
    assert!(std::fs::read(d.mnt.join("keep.bin")).unwrap() == keep2);
    m.stop();
    eprintln!("faults: ENOSPC after {acked} bytes on a 4 MiB tmpfs; plaintext kept, compressed file intact");
}

#[test]
fn damaged_blobs_give_eio_name_the_file_and_spare_the_rest() {
    model_path();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let opts = || Opts {
        log: Some(&log),
        ..Default::default()
    };
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    let mut rng = Rng(7);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("good.bin", binary(&mut rng, 30_000)),
        ("flipped.bin", binary(&mut rng, 30_000)),
        ("cut.bin", binary(&mut rng, 30_000)),
        ("flipped.txt", text(300)),
        // Three frames and a bit; the middle frame is damaged below.
        ("frames.bin", binary(&mut rng, 3 * FRAME_SIZE + 8192)),
    ];
    for (n, v) in &files {
        std::fs::write(d.mnt.join(n), v).unwrap();
    }
    m.wait();
    m.stop();
    // Damage three blobs in BACKING (their blob marker stays).
    let flip = |name: &str, at_frac: f64| {
        let p = d.backing.join(name);
        assert!(is_blob_path(&p).unwrap(), "{name} is not a blob");
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        let at = (len as f64 * at_frac) as u64;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        for x in &mut b {
            *x ^= 0x5a;
        }
        f.write_all_at(&b, at).unwrap();
    };
    flip("flipped.bin", 0.7);
    // Frame 1 of frames.bin: where its stored bytes start, from the blob's own tables.
    let frame1 = {
        let bytes = std::fs::read(d.backing.join("frames.bin")).unwrap();
        let (blob, header_len) = nc06::format::Blob::parse_header(&bytes).unwrap();
        assert!(blob.frames.len() >= 3, "{} frames", blob.frames.len());
        header_len as u64 + blob.index().frame_offsets[1] + 16
    };
    {
        let f = OpenOptions::new()
            .write(true)
            .open(d.backing.join("frames.bin"))
            .unwrap();
        f.write_all_at(&[0xa5; 8], frame1).unwrap();
    }
    flip("flipped.txt", 0.8);
    OpenOptions::new()
        .write(true)
        .open(d.backing.join("cut.bin"))
        .unwrap()
        .set_len(9)
        .unwrap();

    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    for name in ["flipped.bin", "flipped.txt", "cut.bin"] {
        let r = std::fs::read(d.mnt.join(name));
        match r {
            Ok(v) => panic!(
                "{name}: read returned {} bytes from a damaged blob",
                v.len()
            ),
            Err(e) => assert_eq!(errno(&e), libc::EIO, "{name}: {e}"),
        }
    }
    let text_log = std::fs::read_to_string(&log).unwrap();
    for name in ["flipped.bin", "flipped.txt", "cut.bin"] {
        assert!(
            text_log
                .lines()
                .any(|l| l.contains("WARN") && l.contains(name)),
            "no warning names {name}:\n{text_log}"
        );
    }
    // A damaged frame fails only the reads that touch it, and the warning says where.
    {
        let want = &files[4].1;
        let f = std::fs::File::open(d.mnt.join("frames.bin")).unwrap();
        let f0 = FRAME_SIZE as u64;
        let read_at = |at: u64| {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, at).map(|_| b)
        };
        for at in [0, f0 - 4096, 2 * f0, 3 * f0] {
            let got = read_at(at).unwrap_or_else(|e| panic!("frames.bin at {at}: {e}"));
            assert!(
                got[..] == want[at as usize..at as usize + 4096],
                "frames.bin at {at}"
            );
        }
        let e = read_at(f0 + 8192).expect_err("read of the damaged frame succeeded");
        assert_eq!(errno(&e), libc::EIO, "{e}");
        let text_log = std::fs::read_to_string(&log).unwrap();
        let range = format!("{}..{}", f0, 2 * f0);
        assert!(
            text_log
                .lines()
                .any(|l| l.contains("WARN") && l.contains("frames.bin") && l.contains(&range)),
            "no warning names frames.bin and bytes {range}:\n{text_log}"
        );
    }
    // The rest of the mount keeps working.
    assert!(std::fs::read(d.mnt.join("good.bin")).unwrap() == files[0].1);
    let mut names: Vec<_> = std::fs::read_dir(&d.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cut.bin",
            "flipped.bin",
            "flipped.txt",
            "frames.bin",
            "good.bin"
        ]
    );
    std::fs::write(d.mnt.join("new.txt"), b"still writable\n").unwrap();
    assert_eq!(
        std::fs::read(d.mnt.join("new.txt")).unwrap(),
        b"still writable\n"
    );
    // A damaged file can be replaced or removed.
    std::fs::write(d.mnt.join("flipped.bin"), b"replaced").unwrap_or_else(|e| {
        panic!(
            "replacing flipped.bin: {e}\n{}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    assert_eq!(
        std::fs::read(d.mnt.join("flipped.bin")).unwrap(),
        b"replaced"
    );
    std::fs::remove_file(d.mnt.join("cut.bin")).unwrap();
    m.stop();
}

#[test]
fn swapped_model_refuses_text_blobs_instead_of_returning_wrong_bytes() {
    let real = model_path();
    let _g = serial();
    let d = dirs();
    let model = d.root.path().join("model.gguf");
    std::fs::copy(&real, &model).unwrap();
    let log = d.root.path().join("daemon.log");
    let en = text(300);
    let bin_data = binary(&mut Rng(3), 20_000);
    // A cache without the real model: a mount would find it there by the blob's
    // fingerprint and decode with it (tests/models.rs).
    let cache = d.root.path().join("cache");
    std::fs::create_dir_all(cache.join("nacrithfs")).unwrap();
    let opts = || Opts {
        model: Some(&model),
        log: Some(&log),
        env: vec![("XDG_CACHE_HOME", cache.to_str().unwrap().to_string())],
        ..Default::default()
    };
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    std::fs::write(d.mnt.join("en.txt"), &en).unwrap();
    std::fs::write(d.mnt.join("data.bin"), &bin_data).unwrap();
    m.wait();
    m.stop();
    // Swap the model for another: same format and size, one weight byte different.
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&model)
            .unwrap();
        let at = f.metadata().unwrap().len() - 4096;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    }
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    match std::fs::read(d.mnt.join("en.txt")) {
        Ok(v) => panic!(
            "en.txt decoded with another model: {} bytes{}",
            v.len(),
            if v == en {
                " (right by luck)"
            } else {
                " of WRONG content"
            }
        ),
        Err(e) => assert_eq!(errno(&e), libc::EIO, "{e}"),
    }
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.lines().any(|l| l.contains("WARN")
            && l.contains("en.txt")
            && l.contains("was made with model")),
        "no warning names en.txt and the model mismatch:\n{l}"
    );
    // Blobs without text do not depend on the model.
    assert!(std::fs::read(d.mnt.join("data.bin")).unwrap() == bin_data);
    // Stat still works, and a new file is written with the new model.
    assert_eq!(
        std::fs::metadata(d.mnt.join("en.txt")).unwrap().len(),
        en.len() as u64
    );
    m.stop();
    // The right model reads it again.
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            model: Some(&real),
            log: Some(&log),
            ..Default::default()
        },
    );
    assert!(std::fs::read(d.mnt.join("en.txt")).unwrap() == en);
    m.stop();
}

#[test]
fn unusable_model_at_mount_time_is_a_clear_error() {
    model_path();
    let _g = serial();
    let d = dirs();
    let garbage = d.root.path().join("garbage.gguf");
    std::fs::File::create(&garbage)
        .unwrap()
        .write_all(b"GGUF but not really a model")
        .unwrap();
    for (model, what) in [
        (d.root.path().join("missing.gguf"), "missing"),
        (garbage, "garbage"),
    ] {
        let out = bin()
            .args([
                "mount",
                d.backing.to_str().unwrap(),
                d.mnt.to_str().unwrap(),
                "--model",
            ])
            .arg(&model)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim_end().lines().last().unwrap_or("");
        assert_eq!(
            out.status.code(),
            Some(69),
            "{what} model: exit {:?}: {err}",
            out.status.code()
        );
        assert!(
            last.starts_with("nacrithfs: ") && last.contains(model.to_str().unwrap()),
            "{what} model: unclear message: {err}"
        );
        assert!(
            !mount::is_mountpoint(&d.mnt),
            "{what} model: mounted anyway"
        );
        eprintln!("faults: {what} model -> {last}");
    }
}
