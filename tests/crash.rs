//! Crash safety: a loop of `kill -9`s of the daemon (real model) at many points, each
//! followed by a remount that must show every file with its last acknowledged content
//! (a write that returned) or, for the file being written at the kill, a state between
//! its last fsync and the write in flight; no file lost, none duplicated, no temporary
//! file left. One backing directory for the whole loop, so every remount also checks
//! everything the earlier rounds left (and their recovery is itself killed).
//!
//! Kill points: during a stream of writes; during writes into a compressed file (its
//! blob turned back into plaintext); with many files queued; mid-compression of a
//! multi-frame binary file (at fractions of a measured run, checked to be still
//! compressing); mid-encoding and mid-verification of a text file (by the progress the
//! status reports: encoding is the first half of the work); before and after the
//! rename that commits a blob (made deterministic by the `NACRITHFS_FAULT` hook, see
//! crates/fs/src/store/backing.rs); during renames between directories; during
//! start-up recovery. Every remount checks that recovery deleted the temporary files
//! the kill left, and the final clean stop that none are left at all.

#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, serial, Mount, Opts, Rng};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENGLISH: &str = include_str!("data/english.txt");
/// Bytes that are never text to the segmenter (a run of letters would go to the model).
const RUN_BYTES: [u8; 6] = [0x00, 0x01, 0x80, 0x9c, 0xc0, 0xff];

/// What a file may contain after the crash.
#[derive(Clone)]
enum Expect {
    Exact(Vec<u8>),
    /// `planned[..n]` for some n in `min..=max` (appends that may or may not have landed).
    Prefix {
        planned: Vec<u8>,
        min: usize,
        max: usize,
    },
    /// Either of two contents (an overwrite in flight at the kill).
    Either(Vec<u8>, Vec<u8>),
}

struct World {
    backing: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    files: BTreeMap<String, Expect>,
    rng: Rng,
    kills: u32,
    checked: u64,
}

fn text(n: usize, at: usize) -> Vec<u8> {
    let s = &ENGLISH[at..];
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes()[..end].to_vec()
}

/// Binary data that xz and zstd both work on: random bytes mixed with runs.
fn binary(rng: &mut Rng, n: usize) -> Vec<u8> {
    rng.binary(n, 512, |r| {
        RUN_BYTES[r.below(RUN_BYTES.len() as u64) as usize]
    })
}

impl World {
    fn mount(&self, fault: Option<&str>) -> Mount {
        let env = fault
            .map(|f| vec![("NACRITHFS_FAULT", f.to_string())])
            .unwrap_or_default();
        Mount::start_with(
            &self.backing,
            &self.mnt,
            Opts {
                log: Some(&self.log),
                env,
                ..Default::default()
            },
        )
    }

    fn put(&mut self, rel: &str, data: &[u8]) {
        let p = self.mnt.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        self.files
            .insert(rel.to_string(), Expect::Exact(data.to_vec()));
    }

    fn log_len(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.len())
            .unwrap_or(0)
    }

    /// Waits until the daemon log (past byte `from`) contains `what`.
    fn wait_log(&self, from: usize, what: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            let s = std::fs::read_to_string(&self.log).unwrap_or_default();
            if s.get(from..).is_some_and(|s| s.contains(what)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn wait_compressing(&self, m: &Mount, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            let s: serde_json::Value = serde_json::from_str(&m.status()).unwrap_or_default();
            if s["compressing"].as_u64().is_some_and(|n| n >= 1) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn kill(&mut self, m: Mount, point: &str) {
        m.kill9();
        self.kills += 1;
        eprintln!("crash: kill {} {point}", self.kills);
    }

    /// The names in BACKING/.nacrithfs/tmp.
    fn tmp_names(&self) -> Vec<String> {
        std::fs::read_dir(self.backing.join(".nacrithfs/tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The `done / total` of the compression of the file whose path ends with `name`,
    /// if it has started coding (recovery may have queued others beside it).
    fn progress(&self, m: &Mount, name: &str) -> Option<f64> {
        let s: serde_json::Value = serde_json::from_str(&m.status()).ok()?;
        let j = s["jobs"]
            .as_array()?
            .iter()
            .find(|j| j["path"].as_str().is_some_and(|p| p.ends_with(name)))?;
        let (done, total) = (j["done"].as_f64()?, j["total"].as_f64()?);
        (total > 0.0).then(|| done / total)
    }

    /// Waits until the compression in progress has done `frac` of its work (text: the
    /// encoding pass is the first half, the verifying decode the second).
    fn wait_progress(&self, m: &Mount, name: &str, frac: f64, limit: Duration) -> f64 {
        let t = Instant::now();
        loop {
            if let Some(p) = self.progress(m, name).filter(|&p| p >= frac) {
                return p;
            }
            if t.elapsed() >= limit {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(4000)..];
                panic!(
                    "compression never reached {frac}; status {}; daemon log ends:\n{tail}",
                    m.status()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remounts and checks every file, the names (nothing lost, nothing extra) and that
    /// recovery deleted every temporary file the killed daemon left. Returns the new
    /// mount.
    fn remount_and_check(&mut self, point: &str) -> Mount {
        let stale = self.tmp_names();
        if !stale.is_empty() {
            eprintln!("crash:   {} temporary files left by the kill", stale.len());
        }
        let m = self.mount(None);
        let now = self.tmp_names();
        let kept: Vec<_> = stale.iter().filter(|n| now.contains(n)).collect();
        assert!(
            kept.is_empty(),
            "after {point}: recovery kept temporary files of the killed daemon: {kept:?}"
        );
        // Temporary files are named `PID-N.tmp`; the new daemon may already be writing
        // its own (recovery queues the staged files at once), so only another pid's
        // files are leftovers.
        let own = format!("{}-", m.pid());
        let left: Vec<_> = std::fs::read_dir(self.backing.join(".nacrithfs/tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(&own))
            .collect();
        assert!(
            left.is_empty(),
            "after {point}: temporary files left after recovery: {left:?}"
        );
        let mut names = Vec::new();
        list(&self.mnt, Path::new(""), &mut names);
        let want: Vec<_> = self.files.keys().cloned().collect();
        assert_eq!(names, want, "after {point}: the set of files differs");
        let files: Vec<_> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (rel, e) in files {
            let got = std::fs::read(self.mnt.join(&rel))
                .unwrap_or_else(|err| panic!("after {point}: {rel}: {err}"));
            let ok = match &e {
                Expect::Exact(v) => got == *v,
                Expect::Prefix { planned, min, max } => {
                    got.len() >= *min && got.len() <= *max && got[..] == planned[..got.len()]
                }
                Expect::Either(a, b) => got == *a || got == *b,
            };
            assert!(
                ok,
                "after {point}: {rel}: content ({} bytes) is not an allowed state",
                got.len()
            );
            self.checked += 1;
            // From now on the file is exactly what it is.
            self.files.insert(rel, Expect::Exact(got));
        }
        m
    }
}

/// Every regular file under `dir`, as sorted relative paths.
fn list(root: &Path, rel: &Path, out: &mut Vec<String>) {
    let mut v: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    v.sort_by_key(|e| e.file_name());
    for e in v {
        let r = rel.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            list(root, &r, out);
        } else {
            out.push(r.to_string_lossy().into_owned());
        }
    }
    out.sort();
}

/// Appends `planned` to `rel` in 4 KiB writes with an fsync every 8, on a thread, until
/// the daemon dies; returns (bytes acknowledged, bytes fsynced) after the kill.
fn writer(
    path: PathBuf,
    planned: Vec<u8>,
    acked: Arc<AtomicU64>,
    synced: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) else {
            return;
        };
        for (k, c) in planned.chunks(4096).enumerate() {
            if stop.load(Ordering::Relaxed) || f.write_all(c).is_err() {
                return;
            }
            acked.fetch_add(c.len() as u64, Ordering::SeqCst);
            if k % 8 == 7 {
                if f.sync_all().is_err() {
                    return;
                }
                synced.store(acked.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

#[test]
fn kill_9_loop_loses_nothing() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let _g = serial();
    let d = dirs();
    let t0 = Instant::now();
    let mut w = World {
        backing: d.backing.clone(),
        mnt: d.mnt.clone(),
        log: d.root.path().join("daemon.log"),
        files: BTreeMap::new(),
        rng: Rng(mount::seed(0x00c4_a511)),
        kills: 0,
        checked: 0,
    };
    let mut m = w.mount(None);
    // A few compressed files to start from.
    let en = text(420, 0);
    w.put("base/english.txt", &en);
    let b = binary(&mut w.rng, 40_000);
    w.put("base/data.bin", &b);
    m.wait();

    // 1-2. During a stream of appends (fsync every 32 KiB), killed after 150 and 400 ms.
    for (round, delay) in [150u64, 400].into_iter().enumerate() {
        let rel = format!("w/stream{round}.bin");
        std::fs::create_dir_all(w.mnt.join("w")).unwrap();
        let planned = binary(&mut w.rng, 2 << 20);
        let (acked, synced, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let th = writer(
            w.mnt.join(&rel),
            planned.clone(),
            acked.clone(),
            synced.clone(),
            stop.clone(),
        );
        std::thread::sleep(Duration::from_millis(delay));
        let before = acked.load(Ordering::SeqCst) as usize;
        w.kill(m, "during appends");
        stop.store(true, Ordering::Relaxed);
        th.join().unwrap();
        let (a, s) = (
            acked.load(Ordering::SeqCst) as usize,
            synced.load(Ordering::SeqCst) as usize,
        );
        assert!(s <= a && before <= a);
        eprintln!("crash:   {a} bytes acknowledged, {s} fsynced");
        w.files.insert(
            rel,
            Expect::Prefix {
                planned,
                min: a.max(s),
                max: (a + 4096).min(2 << 20),
            },
        );
        m = w.remount_and_check("kill during appends");
    }

    // 3. During overwrites of a compressed file (blob -> plaintext on the first write).
    m.wait();
    {
        let p = w.mnt.join("base/data.bin");
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let patch = w.rng.bytes(3000);
        let mut after = b.clone();
        after[1000..4000].copy_from_slice(&patch);
        f.write_all_at(&patch, 1000).unwrap();
        let patch2 = w.rng.bytes(3000);
        let mut after2 = after.clone();
        after2[20_000..23_000].copy_from_slice(&patch2);
        let th = std::thread::spawn(move || {
            let _ = f.write_all_at(&patch2, 20_000);
        });
        w.kill(m, "during overwrites of a decompressed blob");
        th.join().unwrap();
        w.files
            .insert("base/data.bin".into(), Expect::Either(after, after2));
        m = w.remount_and_check("kill during overwrites");
    }

    // 4-5. With many files queued for compression.
    for round in 0..2 {
        for k in 0..10 {
            let n = 2000 + w.rng.below(30_000) as usize;
            let data = binary(&mut w.rng, n);
            w.put(&format!("q{round}/f{k:02}.bin"), &data);
        }
        w.kill(m, "with files queued");
        m = w.remount_and_check("kill with files queued");
    }

    // 6. During start-up recovery (the remount above queued the plaintext files).
    w.kill(m, "during start-up recovery");
    m = w.remount_and_check("kill during recovery");
    m.wait();

    // 7-9. Mid-compression of a multi-frame binary file, at 10, 40 and 70 % of the time
    // one takes (measured first), each checked to be still compressing at the kill.
    // Timed from when the job is seen compressing: the write and the wait for the job
    // to start are not compression time. This VM's speed varies by a third from run to
    // run, so a file that was done before its kill point is left compressed (it is
    // checked like every other file) and the round is tried again with a new file and
    // the time shortened by that factor.
    let data = binary(&mut w.rng, 1_200_000);
    w.put("big/timing.bin", &data);
    assert!(w.wait_compressing(&m, Duration::from_secs(20)));
    let t = Instant::now();
    m.wait();
    let mut full = t.elapsed();
    eprintln!(
        "crash:   a 1.2 MB binary file compresses in {:.2} s",
        full.as_secs_f64()
    );
    for (round, frac) in [0.1, 0.4, 0.7].into_iter().enumerate() {
        let mut tries = 0;
        loop {
            let data = binary(&mut w.rng, 1_200_000);
            w.put(&format!("big/b{round}-{tries}.bin"), &data);
            assert!(
                w.wait_compressing(&m, Duration::from_secs(20)),
                "compression did not start"
            );
            std::thread::sleep(full.mul_f64(frac));
            if m.status().contains("\"compressing\":1") {
                break;
            }
            tries += 1;
            assert!(
                tries < 5,
                "never still compressing at {frac} of its measured time"
            );
            eprintln!(
                "crash:   done before {frac} of {:.2} s; trying again",
                full.as_secs_f64()
            );
            full = full.mul_f64(0.67);
            m.wait();
        }
        w.kill(
            m,
            &format!(
                "mid-compression of a 1.2 MB binary file ({:.0} %)",
                100.0 * frac
            ),
        );
        m = w.remount_and_check("kill mid-compression");
    }
    m.wait();

    // 10-11. Mid-encoding and mid-verification of a text file, by its progress: the
    // first half of the work is encoding, the second the verifying decode.
    for (round, (frac, phase)) in [(0.2, "mid-encoding"), (0.7, "mid-verification")]
        .into_iter()
        .enumerate()
    {
        let name = format!("text/t{round}.txt");
        w.put(&name, &text(1000, 100 + 200 * round));
        assert!(w.wait_compressing(&m, Duration::from_secs(20)));
        let at = w.wait_progress(&m, &name, frac, Duration::from_secs(300));
        assert!(
            (frac..1.0).contains(&at) && (at < 0.5) == (phase == "mid-encoding"),
            "{phase}: killed at {at:.2} of the work"
        );
        w.kill(
            m,
            &format!("{phase} of text ({:.0} % of the work)", 100.0 * at),
        );
        m = w.remount_and_check(phase);
    }
    m.wait();
    m.stop();

    // 12-13. Just before and just after the rename that commits a blob.
    for point in ["before-rename", "after-rename"] {
        let m = w.mount(Some(&format!("{point}:5000")));
        let from = w.log_len();
        let data = binary(&mut w.rng, 50_000);
        w.put(&format!("rename/{point}.bin"), &data);
        assert!(
            w.wait_log(
                from,
                &format!("pausing 5000 ms {point}"),
                Duration::from_secs(30)
            ),
            "{point}: the hook did not fire"
        );
        if point == "before-rename" {
            assert!(
                std::fs::read_dir(w.backing.join(".nacrithfs/tmp"))
                    .unwrap()
                    .count()
                    > 0,
                "no staged blob"
            );
        } else {
            assert!(nacrithfs_fs::store::backing::is_blob_path(
                &w.backing.join(format!("rename/{point}.bin"))
            )
            .unwrap());
        }
        w.kill(m, point);
        w.remount_and_check(point).stop();
    }
    let mut m = w.mount(None);

    // 14-15. During renames between directories: each file exists once, old name or new.
    for round in 0..2 {
        std::fs::create_dir_all(w.mnt.join("mv/a")).unwrap();
        std::fs::create_dir_all(w.mnt.join("mv/b")).unwrap();
        let names: Vec<String> = (0..10).map(|k| format!("r{round}-{k}")).collect();
        for n in &names {
            let data = binary(&mut w.rng, 3000);
            w.put(&format!("mv/a/{n}"), &data);
        }
        let (mnt, stop) = (w.mnt.clone(), Arc::new(AtomicBool::new(false)));
        let s2 = stop.clone();
        let ns = names.clone();
        let th = std::thread::spawn(move || {
            let mut k = 0usize;
            while !s2.load(Ordering::Relaxed) {
                let n = &ns[k % ns.len()];
                let (a, b) = (mnt.join("mv/a").join(n), mnt.join("mv/b").join(n));
                if std::fs::rename(&a, &b).is_err() && std::fs::rename(&b, &a).is_err() {
                    return;
                }
                k += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(150 + 100 * round));
        w.kill(m, "during renames");
        stop.store(true, Ordering::Relaxed);
        th.join().unwrap();
        // Wherever each file ended up, it must be there exactly once with its content.
        for n in &names {
            let (a, b) = (format!("mv/a/{n}"), format!("mv/b/{n}"));
            let e = w.files.remove(&a).or_else(|| w.files.remove(&b)).unwrap();
            let at = if d.backing.join(&b).exists() { b } else { a };
            w.files.insert(at, e);
        }
        m = w.remount_and_check("kill during renames");
    }

    // Finally: everything compresses, and survives a clean remount.
    m.wait();
    m.stop();
    let m = w.remount_and_check("final clean remount");
    m.wait();
    for (rel, e) in &w.files {
        if let Expect::Exact(v) = e {
            if !v.is_empty() {
                assert!(
                    nacrithfs_fs::store::backing::is_blob_path(&w.backing.join(rel)).unwrap(),
                    "{rel}: not compressed at the end"
                );
            }
        }
    }
    m.stop();
    assert_eq!(
        w.tmp_names(),
        Vec::<String>::new(),
        "a clean stop left temporary files"
    );
    eprintln!(
        "crash: {} kills -9 survived, {} files in the end, {} file checks, 0 lost, 0 duplicated, {:.0} s",
        w.kills,
        w.files.len(),
        w.checked,
        t0.elapsed().as_secs_f64()
    );
}
