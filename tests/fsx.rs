//! An fsx-style exerciser against a live mount (real daemon, real model): random writes
//! (also past the end, leaving holes), truncates (by handle and by path), reads at random
//! offsets through long-lived and fresh handles, fsyncs, closes (which queue the file for
//! compression), waits for compression to finish (so later ops hit blobs: reads decode,
//! writes turn a blob back into plaintext), and remounts (after waiting, and with
//! compression still pending). An in-memory model holds every file's expected content;
//! every read is compared with it, and the run fails at the first mismatch with the seed
//! and the last operations, so it replays with `NACRITHFS_SEED=...`.
//!
//! Data is mostly binary (random bytes and runs: the zstd/xz path, instant); one file now
//! and then gets a short English line, so the model's text path is in the mix too. One
//! file grows to 64 MiB, mostly holes, so its writes, truncates and punched holes cross
//! the 1 MiB frames of its blob. Writes, truncates and `fallocate(2)` (punch hole, zero
//! range, reserve) after a compression point land in the overlay log of a compressed
//! file, including appends.
//! A bystander thread opens, reads and closes the files all along (as `grep -r` or a
//! backup would), so handles come and go while the exerciser's changes and the
//! compressor work on the same files; its reads are not compared (they race the
//! changes by design), but none may fail.
//! `NACRITHFS_FSX_OPS` sets the number of operations (default 10000);
//! `NACRITHFS_FSX_TRACE=FILE` writes every operation to FILE.

#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, seed, serial, Mount, Rng};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

const ENGLISH: &str = include_str!("data/english.txt");
/// Bytes that are never text to the segmenter (a run of letters would go to the model).
const RUN_BYTES: [u8; 6] = [0x00, 0x01, 0x80, 0x9c, 0xc0, 0xff];
/// The files and the largest size each grows to.
const FILES: &[(&str, u64)] = &[
    ("f0.txt", 192 << 10),
    ("f1.bin", 192 << 10),
    ("f2.bin", 192 << 10),
    ("d/f3.bin", 192 << 10),
    ("d/e/f4.bin", 192 << 10),
    ("big.bin", 64 << 20),
];

struct F {
    rel: &'static str,
    /// Largest size the file grows to.
    max: u64,
    model: Vec<u8>,
    handle: Option<File>,
}

struct Fsx {
    rng: Rng,
    seed: u64,
    files: Vec<F>,
    mnt: PathBuf,
    backing: PathBuf,
    log: VecDeque<String>,
    /// Every operation, written to `NACRITHFS_FSX_TRACE` when that is set: a race
    /// shows only some runs, and the 40 last operations may not reach back to it.
    trace: Option<std::io::BufWriter<File>>,
    ops: u64,
    reads_checked: u64,
    bytes_checked: u64,
    compress_points: u64,
    remounts: u64,
}

impl Fsx {
    fn note(&mut self, s: String) {
        if let Some(t) = &mut self.trace {
            use std::io::Write;
            let _ = writeln!(t, "#{} {s}", self.ops);
        }
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {s}", self.ops));
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<_> = self.log.iter().cloned().collect();
        panic!(
            "fsx mismatch (seed {}, op {}): {what}\nlast operations:\n{}",
            self.seed,
            self.ops,
            tail.join("\n")
        );
    }

    fn path(&self, i: usize) -> PathBuf {
        self.mnt.join(self.files[i].rel)
    }

    fn handle(&mut self, i: usize) -> &File {
        if self.files[i].handle.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(i))
                .unwrap_or_else(|e| self.fail(format!("open {}: {e}", self.files[i].rel)));
            self.files[i].handle = Some(f);
        }
        self.files[i].handle.as_ref().unwrap()
    }

    fn data(&mut self, i: usize, len: usize) -> (Vec<u8>, &'static str) {
        match self.rng.below(100) {
            0..=2 if i == 0 => {
                let mut start = self.rng.below((ENGLISH.len() - 300) as u64) as usize;
                while !ENGLISH.is_char_boundary(start) {
                    start += 1;
                }
                let mut end = (start + 80 + self.rng.below(120) as usize).min(ENGLISH.len());
                while !ENGLISH.is_char_boundary(end) {
                    end -= 1;
                }
                (ENGLISH.as_bytes()[start..end].to_vec(), "text")
            }
            0..=59 => (self.rng.bytes(len), "random"),
            _ => (
                vec![RUN_BYTES[self.rng.below(RUN_BYTES.len() as u64) as usize]; len],
                "run",
            ),
        }
    }

    fn write(&mut self, i: usize) {
        let (cur, max) = (self.files[i].model.len() as u64, self.files[i].max);
        let off = match self.rng.below(10) {
            0 => cur,                               // append
            1 => cur + self.rng.below(max / 6 + 1), // past the end: a hole
            _ => self.rng.below(cur + 1),           // inside
        };
        let len = if self.rng.chance(85) {
            1 + self.rng.below(8192)
        } else {
            1 + self.rng.below(64 << 10)
        };
        let len = len.min(max.saturating_sub(off)) as usize;
        if len == 0 {
            return;
        }
        let (data, kind) = self.data(i, len);
        self.note(format!(
            "write {} off {off} len {} ({kind})",
            self.files[i].rel,
            data.len()
        ));
        let f = self.handle(i).try_clone().unwrap();
        f.write_all_at(&data, off)
            .unwrap_or_else(|e| self.fail(format!("write: {e}")));
        let m = &mut self.files[i].model;
        let end = off as usize + data.len();
        if m.len() < end {
            m.resize(end, 0);
        }
        m[off as usize..end].copy_from_slice(&data);
    }

    fn truncate(&mut self, i: usize) {
        let (cur, max) = (self.files[i].model.len() as u64, self.files[i].max);
        let size = match self.rng.below(6) {
            0 => 0,
            1 => cur + self.rng.below(max / 12 + 1),
            _ => self.rng.below(cur + 1),
        }
        .min(max);
        let by_path = self.rng.chance(40);
        self.note(format!(
            "truncate {} to {size} ({})",
            self.files[i].rel,
            if by_path { "path" } else { "handle" }
        ));
        if by_path {
            let c =
                std::ffi::CString::new(self.path(i).into_os_string().into_encoded_bytes()).unwrap();
            // SAFETY: c is a NUL-terminated path that outlives the call.
            if unsafe { libc::truncate(c.as_ptr(), size as libc::off_t) } != 0 {
                self.fail(format!("truncate: {}", std::io::Error::last_os_error()));
            }
        } else {
            let f = self.handle(i).try_clone().unwrap();
            f.set_len(size)
                .unwrap_or_else(|e| self.fail(format!("ftruncate: {e}")));
        }
        self.files[i].model.resize(size as usize, 0);
    }

    /// `fallocate(2)` by handle: a punched hole, a zeroed range (which may grow the
    /// file) or reserved space (which may too).
    fn fallocate(&mut self, i: usize) {
        let (cur, max) = (self.files[i].model.len() as u64, self.files[i].max);
        let off = self.rng.below(cur + 1 + max / 24);
        let len = 1 + self.rng.below((max / 24).min(4 << 20));
        let (mode, name) = match self.rng.below(4) {
            0 | 1 => (
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                "punch hole",
            ),
            2 if self.rng.chance(50) => (
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                "zero range, keep size",
            ),
            2 => (libc::FALLOC_FL_ZERO_RANGE, "zero range"),
            _ => (0, "reserve"),
        };
        let grows = mode & libc::FALLOC_FL_KEEP_SIZE == 0;
        if grows && off + len > max {
            return;
        }
        self.note(format!(
            "fallocate {} off {off} len {len} ({name})",
            self.files[i].rel
        ));
        let f = self.handle(i).try_clone().unwrap();
        // SAFETY: fallocate on an fd that `f` owns for the call; it takes no pointers.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                mode,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            self.fail(format!("fallocate: {}", std::io::Error::last_os_error()));
        }
        let m = &mut self.files[i].model;
        let end = (off + len) as usize;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            let to = end.min(m.len());
            if (off as usize) < to {
                m[off as usize..to].fill(0);
            }
        }
        if grows && m.len() < end {
            m.resize(end, 0);
        }
    }

    fn check_range(&mut self, i: usize, f: &File, off: u64, len: usize, how: &str) {
        let mut buf = vec![0u8; len];
        let mut n = 0;
        while n < len {
            match f.read_at(&mut buf[n..], off + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => self.fail(format!(
                    "read {} off {off} len {len} ({how}): {e}",
                    self.files[i].rel
                )),
            }
        }
        let m = &self.files[i].model;
        let lo = (off as usize).min(m.len());
        let hi = (off as usize + len).min(m.len());
        let want = &m[lo..hi];
        if &buf[..n] != want {
            let at = buf[..n]
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .map(|p| off as usize + p);
            self.fail(format!(
                "read {} off {off} len {len} ({how}): got {n} bytes, expected {} (model size {}), first difference at {at:?}",
                self.files[i].rel,
                want.len(),
                m.len()
            ));
        }
        self.reads_checked += 1;
        self.bytes_checked += n as u64;
    }

    fn read(&mut self, i: usize) {
        let cur = self.files[i].model.len() as u64;
        let off = self.rng.below(cur + 200);
        let max = if self.rng.chance(80) { 4096 } else { 48 << 10 };
        let len = 1 + self.rng.below(max) as usize;
        let fresh = self.rng.chance(30);
        self.note(format!(
            "read {} off {off} len {len}{}",
            self.files[i].rel,
            if fresh { " (fresh handle)" } else { "" }
        ));
        if fresh {
            let f = File::open(self.path(i)).unwrap_or_else(|e| self.fail(format!("open: {e}")));
            self.check_range(i, &f, off, len, "fresh handle");
        } else {
            let f = self.handle(i).try_clone().unwrap();
            self.check_range(i, &f, off, len, "open handle");
        }
    }

    fn check_file(&mut self, i: usize, how: &str) {
        let p = self.path(i);
        let md = std::fs::metadata(&p)
            .unwrap_or_else(|e| self.fail(format!("stat {}: {e}", self.files[i].rel)));
        if md.len() != self.files[i].model.len() as u64 {
            self.fail(format!(
                "{} ({how}): size {} expected {}",
                self.files[i].rel,
                md.len(),
                self.files[i].model.len()
            ));
        }
        let got = std::fs::read(&p)
            .unwrap_or_else(|e| self.fail(format!("read {}: {e}", self.files[i].rel)));
        if got != self.files[i].model {
            let at = got
                .iter()
                .zip(&self.files[i].model)
                .position(|(a, b)| a != b);
            self.fail(format!(
                "{} ({how}): content differs (len {} vs {}), first difference at {at:?}",
                self.files[i].rel,
                got.len(),
                self.files[i].model.len()
            ));
        }
        self.reads_checked += 1;
        self.bytes_checked += got.len() as u64;
    }

    fn check_all(&mut self, how: &str) {
        for i in 0..self.files.len() {
            self.check_file(i, how);
        }
    }

    fn close_all(&mut self) {
        for f in &mut self.files {
            f.handle = None;
        }
    }

    /// Every non-empty file is a blob in BACKING, or kept plain because a blob would not
    /// be smaller (compression really happened).
    fn check_compressed(&self) {
        for f in &self.files {
            let b = self.backing.join(f.rel);
            let blob = nacrithfs_fs::store::backing::is_blob_path(&b).unwrap()
                || nacrithfs_fs::store::backing::is_kept_plain_path(&b).unwrap();
            assert!(
                f.model.is_empty() || blob,
                "{}: not compressed after wait (seed {})",
                f.rel,
                self.seed
            );
        }
    }
}

/// Opens, reads and closes the files under `mnt` until it is stopped (before an
/// unmount); any error fails the run.
struct Bystander {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl Bystander {
    fn start(mnt: &std::path::Path, seed: u64) -> Bystander {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let paths: Vec<PathBuf> = FILES.iter().map(|(rel, _)| mnt.join(rel)).collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0xb1_57a7d);
            let mut opens = 0;
            let mut buf = vec![0u8; 64 << 10];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let p = &paths[rng.below(paths.len() as u64) as usize];
                let f = File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
                let size = f.metadata().map_err(|e| format!("fstat: {e}"))?.len();
                let off = rng.below(size + 1);
                f.read_at(&mut buf, off)
                    .map_err(|e| format!("read {} at {off}: {e}", p.display()))?;
                opens += 1;
            }
            Ok(opens)
        });
        Bystander { stop, thread }
    }

    /// Stops it; how many files it opened.
    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("bystander: {e}"),
            Err(_) => panic!("bystander panicked"),
        }
    }
}

fn ops_wanted() -> u64 {
    std::env::var("NACRITHFS_FSX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn fsx_random_ops_across_compression_and_remounts() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let _g = serial();
    let d = dirs();
    let seed = seed(0x5eed_f5c5);
    let total = ops_wanted();
    let mut m = Mount::start(&d.backing, &d.mnt);
    let mut x = Fsx {
        rng: Rng(seed),
        seed,
        files: FILES
            .iter()
            .map(|&(rel, max)| F {
                rel,
                max,
                model: Vec::new(),
                handle: None,
            })
            .collect(),
        mnt: d.mnt.clone(),
        backing: d.backing.clone(),
        log: VecDeque::new(),
        trace: std::env::var_os("NACRITHFS_FSX_TRACE")
            .map(|p| std::io::BufWriter::new(File::create(p).expect("NACRITHFS_FSX_TRACE"))),
        ops: 0,
        reads_checked: 0,
        bytes_checked: 0,
        compress_points: 0,
        remounts: 0,
    };
    std::fs::create_dir_all(d.mnt.join("d/e")).unwrap();
    for i in 0..FILES.len() {
        File::create(x.path(i)).unwrap();
    }
    let t0 = Instant::now();
    let (mut peak_rss, mut counts) = (0u64, [0u64; 8]);
    let mut bystander = Bystander::start(&d.mnt, seed);
    let mut bystander_opens = 0;
    while x.ops < total {
        x.ops += 1;
        let i = x.rng.below(FILES.len() as u64) as usize;
        let op = x.rng.below(100);
        match op {
            0..=31 => {
                counts[0] += 1;
                x.write(i)
            }
            32..=34 => {
                counts[7] += 1;
                x.fallocate(i)
            }
            35..=42 => {
                counts[1] += 1;
                x.truncate(i)
            }
            43..=79 => {
                counts[2] += 1;
                x.read(i)
            }
            80..=84 => {
                counts[3] += 1;
                x.note(format!("check {}", x.files[i].rel));
                x.check_file(i, "whole file")
            }
            85..=96 => {
                counts[4] += 1;
                x.note(format!("close {}", x.files[i].rel));
                x.files[i].handle = None;
            }
            _ => {
                counts[5] += 1;
                x.note(format!("fsync {}", x.files[i].rel));
                let f = x.handle(i).try_clone().unwrap();
                f.sync_all()
                    .unwrap_or_else(|e| x.fail(format!("fsync: {e}")));
            }
        }
        // Compression points: everything closed, wait until compressed, check all.
        if x.ops.is_multiple_of(500) {
            x.note("close all, wait for compression".into());
            x.close_all();
            m.wait();
            x.compress_points += 1;
            x.check_compressed();
            x.check_all("after compression");
            peak_rss = peak_rss.max(m.rss_kib().1);
        }
        // Remounts: every 1000 ops, alternately with compression pending and done.
        if x.ops % 1000 == 250 {
            let pending = x.remounts.is_multiple_of(2);
            x.note(format!(
                "remount ({})",
                if pending {
                    "compression pending"
                } else {
                    "after wait"
                }
            ));
            x.close_all();
            if !pending {
                m.wait();
            }
            peak_rss = peak_rss.max(m.rss_kib().1);
            bystander_opens += bystander.finish();
            m.stop();
            m = Mount::start(&d.backing, &d.mnt);
            bystander = Bystander::start(&d.mnt, seed + x.ops);
            x.remounts += 1;
            counts[6] += 1;
            x.check_all("after remount");
        }
    }
    x.close_all();
    bystander_opens += bystander.finish();
    m.wait();
    x.check_compressed();
    x.check_all("final");
    m.stop();
    m = Mount::start(&d.backing, &d.mnt);
    x.check_all("final remount");
    peak_rss = peak_rss.max(m.rss_kib().1);
    m.stop();
    let tmp = std::fs::read_dir(d.backing.join(".nacrithfs/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "temporary files left behind");
    eprintln!(
        "fsx: seed {seed}: {} ops (writes {}, fallocates {}, truncates {}, reads {}, whole-file checks {}, closes {}, fsyncs {}), \
         {} compression points, {} remounts, {} reads compared ({} bytes), 0 mismatches, {} bystander opens, {:.1} s, daemon peak RSS {} MiB",
        x.ops,
        counts[0],
        counts[7],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        x.compress_points + 2,
        x.remounts + 1,
        x.reads_checked,
        x.bytes_checked,
        bystander_opens,
        t0.elapsed().as_secs_f64(),
        peak_rss / 1024
    );
}
