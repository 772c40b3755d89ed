//! Load: several writers and readers at once against a live mount (real daemon, real
//! model) for a bounded time, while the daemon compresses behind them. Writers replace
//! files atomically (write a new name, rename over), so a reader must always see one
//! complete version that some writer wrote; at the end every file must have its last
//! version, also after a remount. The daemon's resident memory is sampled all along
//! and its peak (VmHWM) must stay bounded.
//!
//! `NACRITHFS_LOAD_SECS` sets the duration (default 45 s).

#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, serial, Mount, Rng};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ENGLISH: &str = include_str!("data/english.txt");
const WRITERS: usize = 3;
const READERS: usize = 3;
const FILES_PER_WRITER: u64 = 6;
/// Peak resident memory allowed to the daemon (model, two model contexts, caches).
const RSS_BOUND_MIB: u64 = 1536;

#[derive(Default)]
struct Shared {
    /// Every version (CRC-32C) ever renamed into place, per path.
    versions: Mutex<HashMap<String, HashSet<u32>>>,
    /// The last version of each path.
    last: Mutex<HashMap<String, Vec<u8>>>,
    writes: AtomicU64,
    written: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
}

fn content(rng: &mut Rng, text: bool) -> Vec<u8> {
    if text {
        let at = rng.below((ENGLISH.len() - 400) as u64) as usize;
        let mut a = at;
        while !ENGLISH.is_char_boundary(a) {
            a += 1;
        }
        let mut b = (a + 150 + rng.below(150) as usize).min(ENGLISH.len());
        while !ENGLISH.is_char_boundary(b) {
            b -= 1;
        }
        return ENGLISH.as_bytes()[a..b].to_vec();
    }
    let n = 10_000 + rng.below(300_000) as usize;
    rng.binary(n, 1024, |_| 0x80)
}

#[test]
fn concurrent_writers_and_readers_bounded_memory_nothing_lost() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let _g = serial();
    let d = dirs();
    let secs: u64 = std::env::var("NACRITHFS_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let m = Mount::start(&d.backing, &d.mnt);
    let sh = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (sh, stop, mnt) = (sh.clone(), stop.clone(), d.mnt.clone());
        std::fs::create_dir(mnt.join(format!("w{w}"))).unwrap();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(mount::seed(100) + w as u64);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let rel = format!("w{w}/f{}", rng.below(FILES_PER_WRITER));
                // One writer in ten writes English now and then: the model's path.
                let data = content(&mut rng, w == 0 && k % 10 == 9);
                k += 1;
                let tmp: PathBuf = mnt.join(format!("w{w}/.new-{k}"));
                std::fs::write(&tmp, &data).unwrap();
                sh.versions
                    .lock()
                    .unwrap()
                    .entry(rel.clone())
                    .or_default()
                    .insert(crc32c::crc32c(&data));
                std::fs::rename(&tmp, mnt.join(&rel)).unwrap();
                sh.writes.fetch_add(1, Ordering::Relaxed);
                sh.written.fetch_add(data.len() as u64, Ordering::Relaxed);
                sh.last.lock().unwrap().insert(rel, data);
                std::thread::sleep(Duration::from_millis(20 + rng.below(100)));
            }
        }));
    }
    for r in 0..READERS {
        let (sh, stop, mnt) = (sh.clone(), stop.clone(), d.mnt.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(mount::seed(200) + r as u64);
            while !stop.load(Ordering::Relaxed) {
                // Paths renamed into place at least once (versions are recorded before).
                let paths: Vec<String> = sh.last.lock().unwrap().keys().cloned().collect();
                if paths.is_empty() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let rel = &paths[rng.below(paths.len() as u64) as usize];
                let data =
                    std::fs::read(mnt.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
                let crc = crc32c::crc32c(&data);
                let known = sh
                    .versions
                    .lock()
                    .unwrap()
                    .get(rel)
                    .is_some_and(|v| v.contains(&crc));
                assert!(
                    known,
                    "{rel}: read {} bytes that no writer wrote",
                    data.len()
                );
                sh.reads.fetch_add(1, Ordering::Relaxed);
                sh.read_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let t0 = Instant::now();
    let (mut peak, mut samples) = (0u64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(m.rss_kib().0);
        samples += 1;
        if threads.iter().any(|t| t.is_finished()) {
            break; // a thread failed: join below reports it
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a writer or reader failed");
    }
    let status = m.wait();
    let hwm = m.rss_kib().1;
    let check = |when: &str| {
        for (rel, data) in sh.last.lock().unwrap().iter() {
            let got = std::fs::read(d.mnt.join(rel)).unwrap();
            assert!(got == *data, "{when}: {rel} is not its last version");
        }
    };
    check("after the load");
    m.stop();
    let m = Mount::start(&d.backing, &d.mnt);
    check("after a remount");
    m.stop();
    let files = sh.last.lock().unwrap().len();
    eprintln!(
        "load: {WRITERS} writers + {READERS} readers for {:.0} s: {} files written ({} MiB), {} whole-file reads ({} MiB) checked, \
         {files} files all at their last version after a remount; daemon RSS peak {} MiB (VmHWM, {samples} samples, max sampled {} MiB); {status}",
        t0.elapsed().as_secs_f64(),
        sh.writes.load(Ordering::Relaxed),
        sh.written.load(Ordering::Relaxed) >> 20,
        sh.reads.load(Ordering::Relaxed),
        sh.read_bytes.load(Ordering::Relaxed) >> 20,
        hwm / 1024,
        peak / 1024,
    );
    assert!(
        hwm / 1024 < RSS_BOUND_MIB,
        "daemon peak RSS {} MiB over {RSS_BOUND_MIB} MiB",
        hwm / 1024
    );
}
