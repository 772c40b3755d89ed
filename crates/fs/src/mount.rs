//! `nacrithfs mount`, `status` and `wait`: checks, the FUSE session, signals, and the
//! status client.
//!
//! Status mechanism: the daemon serves a hidden read-only file `MNT/.nacrithfs-status`
//! (reachable by name, never listed by readdir) whose content is the live counters as a
//! small JSON object, generated when it is opened. `status` reads it once; `wait` polls
//! it until nothing is queued, compressing or open for writing. No socket, no lookup of
//! BACKING from MNT. The daemon also publishes the same JSON to
//! `BACKING/.nacrithfs/status.json` after each job, for post-mortems.

use crate::core::{Core, CoreConfig, Status, STATUS_NAME};
use crate::error::FsError;
use crate::fuse::NacrithFuse;
use crate::store::{Backing, BackingLock, Codec, LockMode};
use fuser::{Config, MountOption, SessionACL};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a mount failed, or `status`/`wait` could not read one.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The backing directory or mount point is unusable, or the path is not a mount.
    #[error("{0}")]
    Setup(String),
    /// Another nacrithfs process holds the backing directory.
    #[error("{0}")]
    Busy(String),
    /// The backing store or the FUSE session failed.
    #[error("{}", .0.report())]
    Fs(#[from] FsError),
}

/// How a mount serves, once its paths are checked.
pub struct ServeOptions {
    /// Files compressed at once.
    pub jobs: usize,
    /// Memory for decoded extents, in MiB.
    pub cache_mb: usize,
    /// Text chunks decoded ahead of a reader that reads a file in order; 0 for none.
    pub read_ahead: usize,
    /// Larger files are kept as plaintext, in MiB; 0 for no limit.
    pub max_file_mb: u64,
    /// How long a changed file is left alone before it is compressed, in ms.
    pub settle_ms: u64,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// Honour set-uid and set-gid bits of files in the mount (default: nosuid).
    pub suid: bool,
    /// Honour device nodes in the mount (default: nodev).
    pub dev: bool,
}

/// Checks everything that can be checked before loading the model.
pub fn preflight(backing: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf), MountError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::Setup("/dev/fuse does not exist: load the fuse module (modprobe fuse) or run with --device /dev/fuse".into()));
    }
    let b = backing
        .canonicalize()
        .map_err(|e| MountError::Setup(format!("backing directory {}: {e}", backing.display())))?;
    if !b.is_dir() {
        return Err(MountError::Setup(format!(
            "backing directory {}: not a directory",
            backing.display()
        )));
    }
    let m = mountpoint
        .canonicalize()
        .map_err(|e| MountError::Setup(format!("mount point {}: {e}", mountpoint.display())))?;
    let md = std::fs::metadata(&m)
        .map_err(|e| MountError::Setup(format!("mount point {}: {e}", m.display())))?;
    if !md.is_dir() {
        return Err(MountError::Setup(format!(
            "mount point {}: not a directory",
            m.display()
        )));
    }
    let parent = m.parent().unwrap_or(Path::new("/"));
    let pmd = std::fs::metadata(parent)
        .map_err(|e| MountError::Setup(format!("{}: {e}", parent.display())))?;
    if pmd.dev() != md.dev() || (pmd.ino() == md.ino() && m != Path::new("/")) {
        return Err(MountError::Setup(format!(
            "mount point {}: busy (something is already mounted there)",
            m.display()
        )));
    }
    let mut entries = std::fs::read_dir(&m)
        .map_err(|e| MountError::Setup(format!("mount point {}: {e}", m.display())))?;
    if entries.next().is_some() {
        return Err(MountError::Setup(format!(
            "mount point {}: not empty",
            m.display()
        )));
    }
    if m.starts_with(&b) || b.starts_with(&m) {
        return Err(MountError::Setup(format!(
            "mount point {} and backing directory {} must not contain each other",
            m.display(),
            b.display()
        )));
    }
    Ok((b, m))
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned after) and returns
/// their set, for a dedicated thread to `sigwait` on.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before any use; the
    // calls only read and write `set` and this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Unmounts `mnt` with fusermount3 (lazily if busy), falling back to umount(2).
pub fn unmount(mnt: &Path) {
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        match std::process::Command::new("fusermount3")
            .args(args)
            .arg(mnt)
            .status()
        {
            Ok(s) if s.success() => return,
            Ok(s) => log::warn!("fusermount3 {args:?} {}: {s}", mnt.display()),
            Err(e) => log::warn!("fusermount3: {e}"),
        }
    }
    if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
        // SAFETY: c is a NUL-terminated path; MNT_DETACH is a plain flag.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount being set up: its paths are checked and SIGINT/SIGTERM are blocked, so
/// every thread started from here on (the model's included) inherits the mask and
/// only the signal thread sees them. Load the model after this, then [`Mounting::serve`].
pub struct Mounting {
    backing: Backing,
    lock: BackingLock,
    mnt: PathBuf,
    sigset: libc::sigset_t,
}

impl Mounting {
    /// Checks the paths (see [`preflight`]), opens BACKING and takes its lock (one
    /// daemon per backing directory: a second gets [`MountError::Busy`]), and blocks
    /// the signals.
    pub fn new(backing: &Path, mountpoint: &Path) -> Result<Mounting, MountError> {
        let (backing, mnt) = preflight(backing, mountpoint)?;
        let backing = Backing::open(&backing)?;
        let lock = backing.lock(LockMode::Exclusive).map_err(|e| {
            if e.errno() == libc::EBUSY {
                MountError::Busy(e.to_string())
            } else {
                MountError::Fs(e)
            }
        })?;
        let sigset = block_signals();
        // Modes from the kernel are final (it applied the caller's umask); ours must not.
        // SAFETY: umask only sets this process's file mode creation mask.
        unsafe { libc::umask(0) };
        Ok(Mounting {
            backing,
            lock,
            mnt,
            sigset,
        })
    }

    /// Mounts and serves until unmounted or signalled; returns once unmounted.
    pub fn serve(
        self,
        codec: Arc<dyn Codec>,
        opts: &ServeOptions,
        events: &mut dyn ServeEvents,
    ) -> Result<(), MountError> {
        let Mounting {
            backing,
            lock: _lock,
            mnt,
            sigset,
        } = self;
        let backing_dir = backing.root().to_path_buf();
        let core = Core::new(
            backing,
            codec,
            CoreConfig {
                cache_bytes: opts.cache_mb.max(1) << 20,
                read_ahead: opts.read_ahead,
                max_compress_bytes: match opts.max_file_mb {
                    0 => u64::MAX,
                    mb => mb.saturating_mul(1 << 20),
                },
                settle: std::time::Duration::from_millis(opts.settle_ms),
            },
        )?;
        let core = Arc::new(core);
        let (cleaned, queued) = core.recover()?;
        log::info!("recovery: {cleaned} temporary files deleted, {queued} plaintext files queued");
        let spawn_err = |what: &str, e| FsError::io(format!("spawning {what}"), e);
        let mut workers = Vec::new();
        for i in 0..opts.jobs.max(1) {
            let c = core.clone();
            let h = std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || c.worker())
                .map_err(|e| spawn_err("a compressor", e))?;
            workers.push(h);
        }
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("nacrithfs:{}", backing_dir.display())),
            MountOption::Subtype("nacrithfs".into()),
            MountOption::DefaultPermissions,
            MountOption::RW,
        ];
        // As for any filesystem that users can write: set-id bits and device nodes in
        // it have no effect unless asked for.
        if !opts.suid {
            config.mount_options.push(MountOption::NoSuid);
        }
        if !opts.dev {
            config.mount_options.push(MountOption::NoDev);
        }
        if opts.allow_other {
            config.acl = SessionACL::All;
            config.mount_options.push(MountOption::AutoUnmount);
        }
        // Several request threads: a read that decodes takes seconds and must not stall
        // every other request.
        config.n_threads = Some(4);
        let session = fuser::Session::new(NacrithFuse::new(core.clone()), &mnt, &config)
            .map_err(|e| MountError::Setup(format!("cannot mount {}: {e}", mnt.display())))?;
        // SIGINT/SIGTERM unmount as `umount` would (fusermount3 -u, lazily if busy); the
        // session then ends and everything below runs.
        {
            let mnt = mnt.clone();
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || loop {
                    let mut sig = 0;
                    // SAFETY: sigset is an initialised signal set and sig a valid out pointer.
                    if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                        log::info!("signal {sig}: unmounting {}", mnt.display());
                        unmount(&mnt);
                    }
                })
                .map_err(|e| spawn_err("the signal thread", e))?;
        }
        log::info!("mounted {} on {}", backing_dir.display(), mnt.display());
        notify_systemd("READY=1");
        events.ready();
        let r = session.run();
        notify_systemd("STOPPING=1");
        core.shutdown();
        r.map_err(|e| FsError::io("FUSE session", e))?;
        log::info!("unmounted {}", mnt.display());
        // What was written through the mount is on disk before the daemon says it stopped.
        if let Err(e) = core.backing().root_dir().syncfs() {
            log::warn!("{}", e.report());
        }
        events.stopped(&core.status());
        finish_workers(workers, SHUTDOWN_GRACE);
        Ok(())
    }
}

/// What a caller of [`Mounting::serve`] is told.
pub trait ServeEvents {
    /// The mount is up and served.
    fn ready(&mut self);
    /// It was unmounted and everything written through it is on disk; `status` is the
    /// last count (files still queued are compressed at the next mount).
    fn stopped(&mut self, status: &Status);
}

/// Tells systemd (a `Type=notify` unit) how the service is doing; nothing without
/// `$NOTIFY_SOCKET`.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = r {
        log::warn!("sd_notify {state}: {e}");
    }
}

/// How long an unmounted daemon waits for a compression in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Waits up to `grace` for the workers (told to stop) to finish their current job. One
/// still busy is inside llama.cpp, and returning from `main` would run llama.cpp's
/// static destructors under it (a SIGSEGV at exit, found by tests/fsx.rs); so the
/// process leaves at once with `_exit` instead. That loses nothing: the file being
/// compressed is still plaintext in BACKING, its temporary blob is deleted and the file
/// queued again at the next mount, exactly as after a kill -9 (tests/crash.rs).
fn finish_workers(workers: Vec<std::thread::JoinHandle<()>>, grace: Duration) {
    let t = Instant::now();
    while workers.iter().any(|h| !h.is_finished()) {
        if t.elapsed() > grace {
            log::info!("a compression is still running: left for the next mount");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process at once; nothing after it runs.
            unsafe { libc::_exit(0) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in workers {
        let _ = h.join();
    }
}

/// Reads the live status of the mount at `mnt`.
pub fn status(mnt: &Path) -> Result<Status, MountError> {
    let p = mnt.join(STATUS_NAME);
    let s = std::fs::read_to_string(&p).map_err(|e| {
        MountError::Setup(format!("{}: not a nacrithfs mount ({e})", mnt.display()))
    })?;
    Status::from_json(&s)
        .ok_or_else(|| MountError::Setup(format!("{}: unreadable status {s:?}", p.display())))
}

/// Polls until nothing is queued, compressing or open for writing.
pub fn wait(mnt: &Path, timeout: Option<Duration>) -> Result<Status, MountError> {
    let start = Instant::now();
    loop {
        let s = status(mnt)?;
        if s.idle() {
            return Ok(s);
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            return Err(MountError::Setup(format!("timed out; {s}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
