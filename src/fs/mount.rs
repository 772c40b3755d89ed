//! `nacrithfs mount`, `status` and `wait`: checks, the FUSE session, signals, and the
//! status client.
//!
//! Status mechanism: the daemon serves a hidden read-only file `MNT/.nacrithfs-status`
//! (reachable by name, never listed by readdir) whose content is the live counters as a
//! small JSON object, generated when it is opened. `status` reads it once; `wait` polls
//! it until nothing is queued, compressing or open for writing. No socket, no lookup of
//! BACKING from MNT. The daemon also publishes the same JSON to
//! `BACKING/.nacrithfs/status.json` after each job, for post-mortems.

use super::core::{Core, CoreConfig, Status, STATUS_NAME};
use super::fuse::NacrithFuse;
use crate::engine::{Engine, EngineConfig};
use crate::model::{Model, ModelError, ModelOptions};
use crate::store::{Backing, Nc06Codec};
use fuser::{Config, MountOption, SessionACL};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

pub struct MountArgs {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub model: PathBuf,
    pub model_options: ModelOptions,
    pub streams: u32,
    /// Model workers (llama.cpp contexts).
    pub workers: usize,
    /// Files compressed at once.
    pub jobs: usize,
    pub cache_mb: usize,
    pub allow_other: bool,
}

fn setup(msg: String) -> MountError {
    MountError::Setup(msg)
}

/// Checks everything that can be checked before loading the model.
pub fn preflight(backing: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf), MountError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(setup("/dev/fuse does not exist: load the fuse module (modprobe fuse) or run with --device /dev/fuse".into()));
    }
    let b = backing
        .canonicalize()
        .map_err(|e| setup(format!("backing directory {}: {e}", backing.display())))?;
    if !b.is_dir() {
        return Err(setup(format!(
            "backing directory {}: not a directory",
            backing.display()
        )));
    }
    let m = mountpoint
        .canonicalize()
        .map_err(|e| setup(format!("mount point {}: {e}", mountpoint.display())))?;
    let md =
        std::fs::metadata(&m).map_err(|e| setup(format!("mount point {}: {e}", m.display())))?;
    if !md.is_dir() {
        return Err(setup(format!(
            "mount point {}: not a directory",
            m.display()
        )));
    }
    let parent = m.parent().unwrap_or(Path::new("/"));
    let pmd = std::fs::metadata(parent).map_err(|e| setup(format!("{}: {e}", parent.display())))?;
    if pmd.dev() != md.dev() || (pmd.ino() == md.ino() && m != Path::new("/")) {
        return Err(setup(format!(
            "mount point {}: busy (something is already mounted there)",
            m.display()
        )));
    }
    let mut entries =
        std::fs::read_dir(&m).map_err(|e| setup(format!("mount point {}: {e}", m.display())))?;
    if entries.next().is_some() {
        return Err(setup(format!("mount point {}: not empty", m.display())));
    }
    if m.starts_with(&b) || b.starts_with(&m) {
        return Err(setup(format!(
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
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mounts and serves until unmounted or signalled; returns once unmounted.
pub fn run(args: MountArgs) -> Result<(), MountError> {
    let (backing_dir, mnt) = preflight(&args.backing, &args.mountpoint)?;
    // Signals first, so every thread (llama.cpp's included) inherits the mask.
    let sigset = block_signals();
    // Modes from the kernel are final (it applied the caller's umask); ours must not apply.
    unsafe { libc::umask(0) };
    let model = Model::load(&args.model, &args.model_options)?;
    let engine = Arc::new(Engine::new(
        Arc::new(model),
        EngineConfig {
            streams: args.streams.max(1),
            workers: args.workers.max(1),
        },
    ));
    let backing = Backing::open(&backing_dir).map_err(|e| MountError::Io {
        what: "backing directory".into(),
        source: e,
    })?;
    let core = Core::new(
        backing,
        Arc::new(Nc06Codec::new(engine)),
        CoreConfig {
            cache_bytes: args.cache_mb.max(1) << 20,
        },
    )
    .map_err(|e| setup(format!("backing directory: {e}")))?;
    let core = Arc::new(core);
    let (cleaned, queued) = core
        .recover()
        .map_err(|e| setup(format!("recovery: {e}")))?;
    log::info!("recovery: {cleaned} temporary files deleted, {queued} plaintext files queued");
    let mut workers = Vec::new();
    for i in 0..args.jobs.max(1) {
        let c = core.clone();
        let h = std::thread::Builder::new()
            .name(format!("compress-{i}"))
            .spawn(move || c.worker())
            .map_err(|e| MountError::Io {
                what: "spawning worker".into(),
                source: e,
            })?;
        workers.push(h);
    }
    {
        let mnt = mnt.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig = 0;
                if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                    log::info!("signal {sig}: unmounting {}", mnt.display());
                    unmount(&mnt);
                }
            })
            .map_err(|e| MountError::Io {
                what: "spawning signal thread".into(),
                source: e,
            })?;
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("nacrithfs:{}", backing_dir.display())),
        MountOption::Subtype("nacrithfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    if args.allow_other {
        config.acl = SessionACL::All;
        config.mount_options.push(MountOption::AutoUnmount);
    }
    // Several request threads: a read that decodes takes seconds and must not stall
    // every other request.
    config.n_threads = Some(4);
    let session = fuser::Session::new(NacrithFuse::new(core.clone()), &mnt, &config)
        .map_err(|e| setup(format!("cannot mount {}: {e}", mnt.display())))?;
    log::info!("mounted {} on {}", backing_dir.display(), mnt.display());
    let r = session.run();
    core.shutdown();
    r.map_err(|e| MountError::Io {
        what: "FUSE session".into(),
        source: e,
    })?;
    log::info!("unmounted {}", mnt.display());
    finish_workers(workers, SHUTDOWN_GRACE);
    Ok(())
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
    let s = std::fs::read_to_string(&p)
        .map_err(|e| setup(format!("{}: not a nacrithfs mount ({e})", mnt.display())))?;
    Status::from_json(&s).ok_or_else(|| setup(format!("{}: unreadable status {s:?}", p.display())))
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
            return Err(setup(format!("timed out; {s}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
