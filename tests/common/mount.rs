//! A live `nacrithfs mount` for the reliability tests: start, wait until mounted, stop
//! cleanly or kill -9, and unmount whatever is left on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Mounts compete for two cores; one mount test at a time per binary.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The binary under test; `NACRITHFS_TEST_BIN` runs the tests against another build
/// (for example one from before a fix, to see a test fail there).
pub fn bin() -> Command {
    match std::env::var_os("NACRITHFS_TEST_BIN") {
        Some(b) => Command::new(b),
        None => Command::new(env!("CARGO_BIN_EXE_nacrithfs")),
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

pub fn force_unmount(mnt: &Path) {
    if is_mountpoint(mnt) || std::fs::metadata(mnt).is_err() {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
        if is_mountpoint(mnt) || std::fs::metadata(mnt).is_err() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running daemon; always unmounted on drop. Its stderr goes to `log` when given.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub log: Option<PathBuf>,
}

#[derive(Default)]
pub struct Opts<'a> {
    pub model: Option<&'a Path>,
    pub allow_other: bool,
    pub log: Option<&'a Path>,
    pub env: Vec<(&'a str, String)>,
    /// More arguments to `nacrithfs mount`.
    pub args: Vec<&'a str>,
}

impl Mount {
    pub fn start(backing: &Path, mnt: &Path) -> Mount {
        Self::start_with(backing, mnt, Opts::default())
    }

    pub fn start_with(backing: &Path, mnt: &Path, o: Opts) -> Mount {
        let mut cmd = bin();
        cmd.args(["mount", backing.to_str().unwrap(), mnt.to_str().unwrap()]);
        if let Some(m) = o.model {
            cmd.arg("--model").arg(m);
        }
        if o.allow_other {
            cmd.arg("--allow-other");
        }
        cmd.args(&o.args);
        // Tests wait for compressions they start: at once, unless a test times settling.
        if !o.args.contains(&"--settle-ms") {
            cmd.args(["--settle-ms", "0"]);
        }
        cmd.env("RUST_LOG", "info").stdout(Stdio::null());
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        match o.log {
            Some(l) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(l)
                    .expect("daemon log");
                cmd.stderr(f)
            }
            None => cmd.stderr(Stdio::inherit()),
        };
        let child = cmd.spawn().expect("spawn nacrithfs mount");
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log: o.log.map(Path::to_path_buf),
        };
        let t = Instant::now();
        while !is_mountpoint(mnt) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("mount exited early: {st}{}", m.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "mount not ready after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then the daemon must unmount and exit 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "daemon exit: {st}");
        assert!(!is_mountpoint(&self.mnt), "still mounted after SIGTERM");
    }

    /// kill -9, then clear the dead mount.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        force_unmount(&self.mnt);
        assert!(!is_mountpoint(&self.mnt), "dead mount still there");
    }

    /// Resident set size of the daemon now and its peak (VmHWM), in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |k: &str| {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn status(&self) -> String {
        std::fs::read_to_string(self.mnt.join(".nacrithfs-status")).unwrap_or_default()
    }

    /// Blocks until nothing is queued, compressing or open for writing.
    pub fn wait(&self) -> String {
        let out = bin()
            .args(["wait", self.mnt.to_str().unwrap(), "--timeout", "300"])
            .output()
            .expect("wait");
        assert!(
            out.status.success(),
            "wait: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A temporary root with `backing/` and `mnt/`.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
}

pub fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("backing"), root.path().join("mnt"));
    for d in [&backing, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    Dirs { root, backing, mnt }
}

/// A small deterministic PRNG (splitmix64), so failures replay from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `n` bytes that are never text but compress: random pieces and runs of a byte
    /// chosen by `run_byte`, alternating at random, each at most `max_piece` long.
    pub fn binary(
        &mut self,
        n: usize,
        max_piece: u64,
        mut run_byte: impl FnMut(&mut Rng) -> u8,
    ) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let k = (1 + self.below(max_piece) as usize).min(n - v.len());
            if self.chance(50) {
                v.extend(self.bytes(k));
            } else {
                let b = run_byte(self);
                v.extend(std::iter::repeat_n(b, k));
            }
        }
        v
    }
}

/// The seed: `NACRITHFS_SEED` when set, else the given default.
pub fn seed(default: u64) -> u64 {
    std::env::var("NACRITHFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A tmpfs mounted for the life of the value.
pub struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    pub fn mount(at: &'a Path, size: &str) -> Tmpfs<'a> {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}
