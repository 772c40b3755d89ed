//! `nacrithfs pack` / `unpack` / `verify` / `merge-manifests` end to end, with the real
//! binary and model: three shards packed by parallel processes, one killed midway and
//! run again, the manifests merged, every blob verified by other (sharded) processes,
//! the tree unpacked and mounted and compared with the source. Needs root and
//! /dev/fuse for the mount, like tests/fs_mount.rs.

#[path = "common/mount.rs"]
mod mount;

use mount::Mount;
use nacrithfs_pack::manifest::{self, sha256_hex, EntryKind};
use nacrithfs_pack::plan::{self, ItemKind};
use nacrithfs_pack::Shard;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ENGLISH: &str = include_str!("data/english.txt");
const MULTILINGUAL: &str = include_str!("data/multilingual.txt");

/// The scheduler variables a shard reads, cleared so the test's own environment
/// cannot leak in.
const SCHEDULER_ENV: &[&str] = &[
    "JOB_COMPLETION_INDEX",
    "NACRITHFS_SHARDS",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
];

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nacrithfs"));
    for v in SCHEDULER_ENV {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "info");
    c
}

/// Runs a command with the model on one thread: shards share two cores, and llama.cpp's
/// spinning OpenMP threads collapse when oversubscribed.
fn cmd(args: &[&str]) -> Command {
    let mut c = bin();
    c.args(args);
    if matches!(args[0], "pack" | "unpack" | "verify") {
        c.args(["--threads", "1"]);
    }
    c
}

fn ok(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {}\n{err}", out.status);
    assert!(!err.contains("panicked"), "{what}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nacrithfs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    mount::Rng(seed).bytes(n)
}

fn cut(s: &str, from: usize, n: usize) -> &str {
    let mut a = from.min(s.len());
    while !s.is_char_boundary(a) {
        a += 1;
    }
    let mut b = (a + n).min(s.len());
    while !s.is_char_boundary(b) {
        b -= 1;
    }
    &s[a..b]
}

fn diff(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", s(a), s(b)])
        .output()
        .expect("diff");
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small corpus: about 1.2 KB of text in five files, binaries, an empty file, an empty
/// directory, nested directories, symlinks, and names with spaces and non-UTF-8 bytes.
fn corpus(src: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("docs/alice.txt", cut(ENGLISH, 0, 330).as_bytes());
    w("docs/deep/er/rabbit.txt", cut(ENGLISH, 330, 260).as_bytes());
    w("docs/more notes.txt", cut(ENGLISH, 600, 200).as_bytes());
    w("docs/utf8.txt", cut(MULTILINGUAL, 0, 240).as_bytes());
    w("z-last.txt", cut(ENGLISH, 900, 180).as_bytes());
    w("bin/big.bin", &noise(300_000, 1));
    w("bin/r1.bin", &noise(20_000, 2));
    w("bin/r2.bin", &noise(9_000, 3));
    w("bin/r3.bin", &noise(4_000, 4));
    w("bin/zeros.bin", &vec![0u8; 50_000]);
    w("a/b/c/d/e.bin", &noise(1_500, 5));
    w("a/empty", b"");
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("docs/alice.txt", src.join("link-to-alice")).unwrap();
    std::os::unix::fs::symlink("a/b", src.join("a/link-to-dir")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", src.join("dangling")).unwrap();
    let odd = src.join(OsStr::from_bytes(b"bin/odd-\xff name.bin"));
    std::fs::write(odd, noise(700, 6)).unwrap();
}

/// Whole lines of a manifest that is being appended to.
fn complete_lines(p: &Path) -> usize {
    std::fs::read(p)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// "N files (P packed, S already packed)" from a pack report.
fn packed_counts(report: &str) -> (u64, u64, u64) {
    let n = |after: &str, before: &str| -> u64 {
        let tail = &report[report
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {report:?}"))
            + after.len()..];
        tail[..tail.find(before).unwrap()].trim().parse().unwrap()
    };
    (
        n(": ", " files"),
        n("(", " packed"),
        n("packed, ", " already"),
    )
}

#[test]
fn three_shards_one_killed_then_merge_verify_unpack_mount() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let t0 = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let (src, dest, out, mnt) = (
        root.path().join("src"),
        root.path().join("packed"),
        root.path().join("out"),
        root.path().join("mnt"),
    );
    corpus(&src);
    std::fs::create_dir(&mnt).unwrap();
    let internal = dest.join(".nacrithfs");

    // The plan every shard computes; the victim is a shard with text still to do after
    // its first entry, so that killing it after one entry kills it mid-work. It packs
    // file by file (--batch-bytes 1); the others, and its rerun, batch small files into
    // shared model runs.
    let tree = plan::walk(&src, Some(".nacrithfs")).unwrap();
    let shards: Vec<_> = (0..3)
        .map(|i| plan::shard_items(&tree.items, Shard { index: i, count: 3 }))
        .collect();
    let text_after_first = |items: &[plan::Item]| {
        items
            .iter()
            .skip(1)
            .filter(|i| i.rel.extension() == Some(OsStr::new("txt")))
            .count()
    };
    let victim = (0..3)
        .max_by_key(|&i| (text_after_first(&shards[i]), i))
        .unwrap();
    assert!(
        text_after_first(&shards[victim]) > 0,
        "no shard has text after its first file: {shards:?}"
    );
    let victim_total = shards[victim].len();

    let mut children: Vec<Child> = (0..3)
        .map(|i| {
            let mut c = cmd(&["pack", s(&src), s(&dest), "--shard", &format!("{i}/3")]);
            if i == victim {
                c.args(["--batch-bytes", "1"]);
            }
            spawn(&mut c)
        })
        .collect();
    let partial = internal.join(format!("manifest-{victim}-of-3.jsonl.partial"));
    let t = Instant::now();
    while complete_lines(&partial) < 2 {
        assert!(
            children[victim].try_wait().unwrap().is_none(),
            "shard {victim} finished before it could be killed"
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "shard {victim} packed nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    children[victim].kill().unwrap();
    let killed = children.remove(victim).wait_with_output().unwrap();
    assert!(!killed.status.success());
    let done_before_kill = complete_lines(&partial) - 1;
    assert!(
        !internal
            .join(format!("manifest-{victim}-of-3.jsonl"))
            .exists(),
        "killed shard wrote its manifest"
    );
    assert!(
        done_before_kill < victim_total,
        "shard {victim} had finished every file"
    );
    for c in children {
        ok(c.wait_with_output().unwrap(), "pack shard");
    }
    eprintln!("[{:.1}s] 3 shards run, shard {victim} killed after {done_before_kill} of {victim_total} files", t0.elapsed().as_secs_f64());

    // The merge refuses while a shard is unfinished.
    let m = cmd(&["merge-manifests", s(&dest)]).output().unwrap();
    assert_eq!(
        m.status.code(),
        Some(66),
        "{}",
        String::from_utf8_lossy(&m.stderr)
    );
    assert!(String::from_utf8_lossy(&m.stderr).contains(&format!("{victim}/3 unfinished")));

    // The rerun does the rest and only the rest.
    let report = ok(
        cmd(&["pack", s(&src), s(&dest), "--shard", &format!("{victim}/3")])
            .output()
            .unwrap(),
        "rerun",
    );
    let (files, packed, skipped) = packed_counts(&report);
    assert_eq!(files, victim_total as u64, "{report}");
    assert_eq!(packed + skipped, files, "{report}");
    assert!(
        skipped >= done_before_kill as u64,
        "{report}: files done before the kill were packed again"
    );
    assert_eq!(
        std::fs::read_dir(internal.join("tmp")).unwrap().count(),
        0,
        "temporary files left behind"
    );
    eprintln!("[{:.1}s] rerun: {report}", t0.elapsed().as_secs_f64());

    // Merge: every source entry exactly once, with the source's size and digest.
    ok(
        cmd(&["merge-manifests", s(&dest)]).output().unwrap(),
        "merge",
    );
    let (header, entries) = manifest::read(&internal.join("manifest.jsonl")).unwrap();
    assert_eq!((header.shards, header.files), (3, tree.items.len() as u64));
    let listed: BTreeMap<Vec<u8>, _> = entries
        .iter()
        .map(|e| (e.rel.as_os_str().as_bytes().to_vec(), e))
        .collect();
    assert_eq!(listed.len(), tree.items.len(), "a path listed twice");
    for item in &tree.items {
        let e = listed
            .get(item.rel.as_os_str().as_bytes())
            .unwrap_or_else(|| panic!("{} not in the manifest", item.rel.display()));
        let p = src.join(&item.rel);
        let (kind, bytes) = match item.kind {
            ItemKind::Symlink => (
                EntryKind::Symlink,
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            ),
            ItemKind::File => {
                let b = std::fs::read(&p).unwrap();
                (
                    if b.is_empty() {
                        EntryKind::Plain
                    } else {
                        EntryKind::Blob
                    },
                    b,
                )
            }
        };
        assert_eq!(
            (e.kind, e.size, &e.sha256),
            (kind, bytes.len() as u64, &sha256_hex(&bytes)),
            "{}",
            item.rel.display()
        );
        // The destination is a backing directory: marked blobs, plain empty files, symlinks.
        let d = dest.join(&item.rel);
        let blob = nacrithfs_fs::store::backing::is_blob_path(&d).unwrap();
        assert_eq!(blob, kind == EntryKind::Blob, "{}", item.rel.display());
        if blob {
            assert_eq!(&std::fs::read(&d).unwrap()[..4], b"NC06");
            assert_eq!(e.stored, std::fs::metadata(&d).unwrap().len());
        }
    }
    let len = |p: PathBuf| std::fs::metadata(p).unwrap().len();
    assert!(
        len(dest.join("docs/alice.txt")) < len(src.join("docs/alice.txt")) / 2,
        "English text barely compressed"
    );
    assert!(
        len(dest.join("docs/utf8.txt")) < len(src.join("docs/utf8.txt")),
        "UTF-8 text not compressed"
    );

    // Verify on "other machines": two Kubernetes-style shards in parallel.
    let verifiers: Vec<Child> = (0..2)
        .map(|i| {
            spawn(
                cmd(&["verify", s(&dest)])
                    .env("JOB_COMPLETION_INDEX", i.to_string())
                    .env("NACRITHFS_SHARDS", "2"),
            )
        })
        .collect();
    let mut verified = 0;
    for v in verifiers {
        let r = ok(v.wait_with_output().unwrap(), "verify");
        verified += r
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{r}"));
    }
    assert_eq!(verified, tree.items.len());
    eprintln!("[{:.1}s] verified", t0.elapsed().as_secs_f64());

    // Unpack as a 1-based Slurm array of two tasks, in parallel.
    let unpackers: Vec<Child> = (1..=2)
        .map(|id| {
            spawn(
                cmd(&["unpack", s(&dest), s(&out)])
                    .env("SLURM_ARRAY_TASK_ID", id.to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "1")
                    .env("SLURM_ARRAY_TASK_COUNT", "2"),
            )
        })
        .collect();
    for u in unpackers {
        ok(u.wait_with_output().unwrap(), "unpack");
    }
    diff(&src, &out);
    eprintln!("[{:.1}s] unpacked", t0.elapsed().as_secs_f64());

    // And the packed tree mounts as a backing directory.
    let m = Mount::start(&dest, &mnt);
    diff(&src, &mnt);
    m.stop();
    eprintln!("[{:.1}s] mounted and compared", t0.elapsed().as_secs_f64());
}

#[test]
fn merge_catches_a_changed_source_and_verify_catches_damage() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("src"), root.path().join("packed"));
    std::fs::create_dir_all(src.join("c")).unwrap();
    std::fs::write(src.join("a.bin"), noise(3000, 1)).unwrap();
    std::fs::write(src.join("b.bin"), noise(2000, 2)).unwrap();
    std::fs::write(src.join("c/d.bin"), noise(1000, 3)).unwrap();
    ok(
        cmd(&["pack", s(&src), s(&dest), "--shard", "0/2"])
            .output()
            .unwrap(),
        "pack 0/2",
    );
    std::fs::write(src.join("e.bin"), noise(500, 4)).unwrap();
    ok(
        cmd(&["pack", s(&src), s(&dest), "--shard", "1/2"])
            .output()
            .unwrap(),
        "pack 1/2",
    );
    let m = cmd(&["merge-manifests", s(&dest)]).output().unwrap();
    assert_eq!(m.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&m.stderr).contains("different file list"),
        "{}",
        String::from_utf8_lossy(&m.stderr)
    );
    // Rerunning the stale shard brings it onto the new plan.
    ok(
        cmd(&["pack", s(&src), s(&dest), "--shard", "0/2"])
            .output()
            .unwrap(),
        "pack 0/2 again",
    );
    let merged = ok(
        cmd(&["merge-manifests", s(&dest)]).output().unwrap(),
        "merge",
    );
    assert!(merged.contains("4 files"), "{merged}");
    ok(cmd(&["verify", s(&dest)]).output().unwrap(), "verify");

    // A damaged blob, a missing file and a stray one.
    let blob = dest.join("a.bin");
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap(); // same inode: the blob marker stays
    std::fs::remove_file(dest.join("b.bin")).unwrap();
    std::fs::write(dest.join("stray"), b"").unwrap();
    let v = cmd(&["verify", s(&dest)]).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(65), "{err}");
    assert!(err.contains("2 of 5 files failed"), "{err}");
    assert!(
        err.contains("a.bin") && err.contains("b.bin: listed in the manifest but missing"),
        "{err}"
    );
    assert!(err.contains("stray: not in the manifest"), "{err}");
    // Pack puts back what is missing. It trusts blobs it finds (each was verified before
    // it was renamed into place); a damaged one is deleted, then packed again.
    let report = ok(
        cmd(&["pack", s(&src), s(&dest)]).output().unwrap(),
        "repair",
    );
    assert!(report.contains("(1 packed, 3 already packed)"), "{report}");
    std::fs::remove_file(&blob).unwrap();
    let report = ok(
        cmd(&["pack", s(&src), s(&dest)]).output().unwrap(),
        "repair",
    );
    assert!(report.contains("(1 packed, 3 already packed)"), "{report}");
    ok(
        cmd(&["verify", s(&dest)]).output().unwrap(),
        "verify after repair",
    );
}

#[test]
fn usage_errors_are_one_line_with_sysexits_codes() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("src"), root.path().join("packed"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("t.txt"),
        "Some text that needs the model to be packed.\n".repeat(3),
    )
    .unwrap();
    let fails = |c: &mut Command, code: i32, what: &str| {
        let out = c.env("RUST_LOG", "off,nacrithfs=warn").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with("nacrithfs: ") && !err.contains("panicked"),
            "{what}: {err}"
        );
    };
    fails(
        &mut cmd(&["pack", "/nonexistent/src", s(&dest)]),
        66,
        "missing source",
    );
    fails(
        &mut cmd(&["pack", s(&src), s(&src.join("inside"))]),
        64,
        "destination inside the source",
    );
    fails(
        &mut cmd(&["pack", s(&src), s(&dest), "--shard", "3/3"]),
        64,
        "shard out of range",
    );
    fails(
        &mut cmd(&["pack", s(&src), s(&dest), "--shard", "x"]),
        64,
        "shard not I/N",
    );
    fails(
        cmd(&["pack", s(&src), s(&dest)]).env("JOB_COMPLETION_INDEX", "1"),
        64,
        "k8s index without a count",
    );
    fails(
        cmd(&["pack", s(&src), s(&dest)])
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "4")
            .env("SLURM_ARRAY_TASK_STEP", "2"),
        64,
        "stepped array",
    );
    fails(
        cmd(&["pack", s(&src), s(&dest)]).env("NACRITHFS_MODEL", "/nonexistent/model.gguf"),
        69,
        "missing model",
    );
    fails(
        &mut cmd(&["merge-manifests", s(&dest)]),
        66,
        "nothing to merge",
    );
    fails(
        &mut cmd(&["verify", "/nonexistent/packed"]),
        66,
        "missing packed tree",
    );
}

#[test]
fn batched_blobs_equal_single_file_blobs() {
    use nacrithfs_engine::model::{resolve_model_path, Model, ModelOptions};
    use nacrithfs_engine::{CompressOptions, Engine, EngineConfig};
    let path = resolve_model_path(None).expect("model missing: run scripts/fetch-model.sh");
    // One thread: on a shared 2-core machine, llama.cpp's spinning OpenMP team collapses.
    let model = std::sync::Arc::new(
        Model::load(
            &path,
            &ModelOptions {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let engine = Engine::new(
        model,
        EngineConfig {
            streams: 4,
            workers: 1,
        },
    );
    let mixed = [
        cut(ENGLISH, 0, 80).as_bytes(),
        &noise(300, 9),
        cut(MULTILINGUAL, 0, 70).as_bytes(),
    ]
    .concat();
    let files: Vec<Vec<u8>> = vec![
        cut(ENGLISH, 100, 90).as_bytes().to_vec(),
        noise(2000, 8),
        cut(ENGLISH, 400, 70).as_bytes().to_vec(),
        mixed,
        cut(MULTILINGUAL, 100, 70).as_bytes().to_vec(),
    ];
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let opts = CompressOptions::default();
    let batch = engine.compress_batch(&refs, &opts, None).unwrap();
    assert_eq!(batch.len(), files.len());
    for (f, b) in files.iter().zip(batch) {
        let b = b.unwrap();
        // Verification does not change a blob; the batch above verified.
        let alone = engine
            .compress(
                f,
                &CompressOptions {
                    verify: false,
                    ..opts.clone()
                },
                None,
            )
            .unwrap();
        assert_eq!(
            b.blob, alone.blob,
            "a blob coded in a batch differs from the same file coded alone"
        );
        assert_eq!(engine.decompress(&b.blob, None).unwrap(), *f);
    }
}

/// A file larger than the window is packed alone, a window at a time, into the very
/// blob `nacrithfs compress` streams for it; unpack and verify decode it a window at a
/// time. A rerun finds it packed (from the blob's header, not its payload).
#[test]
fn files_larger_than_the_window_are_packed_in_windows() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let root = tempfile::tempdir().unwrap();
    let (src, dest, out) = (
        root.path().join("src"),
        root.path().join("packed"),
        root.path().join("out"),
    );
    std::fs::create_dir(&src).unwrap();
    // 10.5 MiB, past the 8 MiB decoding window too: noise, a line of text, zeros, noise.
    let big = [
        noise(4 << 20, 11),
        cut(ENGLISH, 0, 200).as_bytes().to_vec(),
        vec![0; 3 << 20],
        noise((7 << 19) - 200, 12),
    ]
    .concat();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), cut(ENGLISH, 300, 120)).unwrap();
    let report = ok(
        cmd(&["pack", s(&src), s(&dest), "--window-mb", "1"])
            .output()
            .unwrap(),
        "pack",
    );
    assert_eq!(packed_counts(&report), (2, 2, 0), "{report}");
    let alone = root.path().join("big.nc06");
    ok(
        cmd(&[
            "compress",
            "-q",
            "--window-mb",
            "1",
            s(&src.join("big.bin")),
        ])
        .args(["-o", s(&alone)])
        .output()
        .unwrap(),
        "compress",
    );
    assert!(
        std::fs::read(dest.join("big.bin")).unwrap() == std::fs::read(&alone).unwrap(),
        "pack and compress wrote different blobs for the same large file"
    );
    let again = ok(
        cmd(&["pack", s(&src), s(&dest), "--window-mb", "1"])
            .output()
            .unwrap(),
        "pack again",
    );
    assert_eq!(packed_counts(&again), (2, 0, 2), "{again}");
    ok(
        cmd(&["merge-manifests", s(&dest)]).output().unwrap(),
        "merge",
    );
    ok(cmd(&["verify", s(&dest)]).output().unwrap(), "verify");
    ok(
        cmd(&["unpack", s(&dest), s(&out)]).output().unwrap(),
        "unpack",
    );
    diff(&src, &out);
    // Damage in the payload: verify and unpack both refuse, naming the file.
    let blob = dest.join("big.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    let len = f.metadata().unwrap().len();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\x55\xaa\x55\xaa", len / 2).unwrap();
    drop(f);
    let bad = cmd(&["verify", s(&dest)]).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "verify passed a damaged blob: {err}");
    assert!(
        err.contains("big.bin") && !err.contains("panicked"),
        "{err}"
    );
}
