//! `nacrithfs mount` and `umount`, in the foreground or detached (`--daemon`), and the
//! argument form that mount(8) and mount.fuse3 use, so an fstab line works.

use crate::args::{ModelArgs, WindowArgs};
use crate::error::CliError;
use clap::Args;
use nacrithfs_codec::Nc06Codec;
use nacrithfs_engine::EngineSet;
use nacrithfs_fs::mount::{Mounting, ServeEvents, ServeOptions};
use nacrithfs_fs::Status;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `nacrithfs mount`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The backing directory: where the files are stored (compressed).
    pub backing: PathBuf,
    /// Where they appear.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Files compressed at once; their chunks share the model workers' streams.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Memory for decoded extents of compressed files, in MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: usize,
    /// Text chunks decoded ahead of a reader that reads a file in order, in the
    /// background, behind the reads that wait; 0 turns it off. The default is the
    /// streams of one lockstep batch.
    #[arg(long, default_value_t = nacrithfs_fs::core::DEFAULT_READ_AHEAD)]
    pub read_ahead: usize,
    /// Milliseconds a changed file is left alone before it is compressed; a change
    /// meanwhile starts the wait again, so a file written again and again (a log) is
    /// compressed once it is quiet, not given up at each change. 0 compresses at once.
    #[arg(long, default_value_t = nacrithfs_fs::core::DEFAULT_SETTLE.as_millis() as u64)]
    pub settle_ms: u64,
    /// Files larger than this many MiB are kept as plaintext; 0, the default, for no
    /// limit (the compressor holds an 8 MiB window of a file, whatever its size).
    #[arg(long, default_value_t = 0)]
    pub max_file_mb: u64,
    /// Target size of a text chunk, in bytes: the unit a read decodes and a change
    /// codes again. Smaller chunks give a faster first byte and cheaper edits, at some
    /// cost in ratio (each chunk starts the model afresh).
    #[arg(long, default_value_t = nacrithfs_engine::DEFAULT_CHUNK_SIZE as u32, value_parser = clap::value_parser!(u32).range(64..=(1 << 24)))]
    pub chunk_size: u32,
    /// Files larger than this many MiB are compressed this many MiB at a time: what a
    /// compression holds in memory is a few times this, whatever the file's size.
    #[arg(long, default_value_t = (nacrithfs_codec::STREAM_WINDOW >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window_mb: u32,
    /// Let other users access the mount (and unmount it when the daemon dies).
    #[arg(long)]
    pub allow_other: bool,
    /// Honour set-uid/set-gid bits of files in the mount (default: nosuid).
    #[arg(long)]
    pub suid: bool,
    /// Honour device nodes in the mount (default: nodev).
    #[arg(long)]
    pub dev: bool,
    /// Run in the background once the mount is ready; exit 0 only then (and with the
    /// error otherwise). The default is to stay in the foreground.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: append the daemon's log to this file (default: discarded).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// Mounts, in the foreground or (`--daemon`) detached once ready.
pub fn mount(mut args: MountArgs) -> Result<(), CliError> {
    if !args.daemon {
        return serve(&args, None);
    }
    // The daemon changes directory to /: resolve relative paths first.
    for p in [&mut args.backing, &mut args.mountpoint] {
        if let Ok(abs) = std::path::absolute(&*p) {
            *p = abs;
        }
    }
    let pipe = detach(args.log.as_deref())?;
    let mut report = pipe.try_clone().ok();
    match serve(&args, Some(pipe)) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Still waited for by the parent if the mount never came up: tell it why.
            if let Some(p) = report.as_mut() {
                let _ = writeln!(p, "ERR {} {e}", e.exit_code());
            }
            Err(e)
        }
    }
}

/// Loads the model and serves until unmounted; `ready` is told once the mount is up.
fn serve(args: &MountArgs, ready: Option<std::fs::File>) -> Result<(), CliError> {
    // The paths are checked before the model is loaded, so a bad one fails fast, and the
    // model's threads start after the signals are blocked.
    let window = args.window.window()?;
    let mounting = Mounting::new(&args.backing, &args.mountpoint)?;
    let engine = Arc::new(args.model.engine()?);
    let model = engine.model();
    let name = model
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mnt = args.mountpoint.display().to_string();
    // Where the model runs: the portable engine's device, when it is not the CPU.
    let on = model
        .device()
        .map(|d| format!(", on {d}"))
        .unwrap_or_default();
    let line = format!(
        "nacrithfs: serving {} on {mnt} (model {name}, {}{on}; window {}; {} worker{} x {} streams, {} compressors, cache {} MiB); stop with `nacrithfs umount {mnt}`",
        args.backing.display(),
        model.fingerprint(),
        window.ctx,
        engine.config().workers,
        if engine.config().workers == 1 { "" } else { "s" },
        engine.config().streams,
        args.jobs.max(1),
        args.cache_mb.max(1),
    );
    let opts = ServeOptions {
        jobs: args.jobs,
        cache_mb: args.cache_mb,
        read_ahead: args.read_ahead,
        max_file_mb: args.max_file_mb,
        settle_ms: args.settle_ms,
        allow_other: args.allow_other,
        suid: args.suid,
        dev: args.dev,
    };
    let mut events = Events {
        line,
        mnt,
        ready,
        started: Instant::now(),
    };
    // Blobs of other cached models decode with their own model, loaded when needed.
    let engines = EngineSet::new(engine, args.model.options());
    Ok(mounting.serve(
        Arc::new(
            Nc06Codec::new(Arc::new(engines))
                .with_chunk_size(args.chunk_size as usize)
                .with_window(window)
                .with_stream_window((args.window_mb as usize) << 20),
        ),
        &opts,
        &mut events,
    )?)
}

/// The ready line and the summary at stop, on stderr (and to a waiting parent).
struct Events {
    line: String,
    mnt: String,
    ready: Option<std::fs::File>,
    started: Instant,
}

impl ServeEvents for Events {
    fn ready(&mut self) {
        eprintln!("{}", self.line);
        if let Some(mut p) = self.ready.take() {
            let _ = writeln!(p, "READY {}", self.line);
        }
    }

    fn stopped(&mut self, s: &Status) {
        let left = s.queued + s.compressing + s.retrying;
        eprintln!(
            "nacrithfs: unmounted {} after {}: {}{}",
            self.mnt,
            nacrithfs_fs::core::human_secs(self.started.elapsed().as_secs()),
            s.summary(),
            if left > 0 {
                format!("; {left} left to compress at the next mount")
            } else {
                String::new()
            }
        );
    }
}

/// Forks. The parent waits until the child says the mount is ready (or why it
/// failed) and exits with that; the child, in a new session with /dev/null for input
/// and output (its log to `log`, if given), returns the pipe to say it on.
fn detach(log: Option<&Path>) -> Result<std::fs::File, CliError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both descriptors were just returned by pipe2 and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let log_file = match log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| CliError::NoInput {
                    path: p.to_path_buf(),
                    source,
                })?,
        ),
        None => None,
    };
    // SAFETY: the process is still single-threaded here (nothing has started a thread
    // before `mount`), so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid > 0 {
        drop(wr);
        // One line: the child keeps the pipe open while it serves.
        let mut msg = String::new();
        let _ = std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut msg);
        let msg = msg.trim_end().to_string();
        if let Some(line) = msg.strip_prefix("READY ") {
            eprintln!("{line} [pid {pid}]");
            std::process::exit(0);
        }
        if let Some(rest) = msg.strip_prefix("ERR ") {
            let (code, text) = rest.split_once(' ').unwrap_or(("1", rest));
            eprintln!("nacrithfs: {text}");
            std::process::exit(code.parse().unwrap_or(1));
        }
        eprintln!("nacrithfs: the daemon (pid {pid}) exited before the mount was ready");
        std::process::exit(70);
    }
    drop(rd);
    // SAFETY: setsid and chdir take no memory the process does not own; the dup2s
    // replace the standard descriptors with ones that stay open.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            match &log_file {
                Some(f) => libc::dup2(std::os::fd::AsRawFd::as_raw_fd(f), 2),
                None => libc::dup2(null, 2),
            };
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(std::fs::File::from(wr))
}

/// `nacrithfs umount`: unmount, then wait for the daemon to finish (everything
/// written is on disk when it exits). Busy (files open in the mount): an error,
/// unless `lazy` detaches it now and lets it go once they are closed.
pub fn umount(mnt: &Path, lazy: bool, timeout: Duration) -> Result<(), CliError> {
    let status = nacrithfs_fs::mount::status(mnt)?;
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes())
        .map_err(|_| CliError::Usage(format!("{}: path contains NUL", mnt.display())))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c is a NUL-terminated path; flags is a plain flag word.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let ok = if e.raw_os_error() == Some(libc::EPERM) {
            // Not root: the setuid helper can unmount a mount of ours.
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            cmd.arg(mnt).status().is_ok_and(|s| s.success())
        } else {
            false
        };
        if !ok {
            return Err(if e.raw_os_error() == Some(libc::EBUSY) {
                CliError::Busy(format!(
                    "{}: busy (files are open in it; see `fuser -vm {}`), not unmounted; --lazy detaches it now",
                    mnt.display(),
                    mnt.display()
                ))
            } else {
                CliError::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot unmount {}: {e}", mnt.display()),
                ))
            });
        }
    }
    let pid = status.pid;
    let t = Instant::now();
    while pid != 0 && Path::new(&format!("/proc/{pid}")).exists() && !lazy {
        if t.elapsed() > timeout {
            return Err(CliError::Busy(format!(
                "{}: unmounted, but the daemon (pid {pid}) is still running after {}s",
                mnt.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "nacrithfs: {} {}",
        if lazy { "detached" } else { "unmounted" },
        mnt.display()
    );
    Ok(())
}

/// The argument form of mount(8) helpers: invoked as `mount.fuse.nacrithfs BACKING
/// MNT [-o OPTS] [-n] [-s] [-f] [-v]`, or by mount.fuse3 as `nacrithfs BACKING MNT -o
/// OPTS` (an fstab line of type `fuse.nacrithfs`). Returns the equivalent
/// `nacrithfs mount --daemon …` arguments, or `None` when `argv` is not of that form.
pub fn helper_args(
    argv: &[OsString],
    subcommands: &[&str],
) -> Option<Result<Vec<OsString>, CliError>> {
    let prog = argv
        .first()
        .map(|p| Path::new(p).file_name().unwrap_or_default().to_os_string())?;
    let as_helper = prog.as_bytes().starts_with(b"mount.");
    let first = argv.get(1)?;
    let looks_like_path =
        !first.as_bytes().starts_with(b"-") && !subcommands.iter().any(|s| OsStr::new(s) == first);
    if !as_helper && !looks_like_path {
        return None;
    }
    Some(translate(argv))
}

fn translate(argv: &[OsString]) -> Result<Vec<OsString>, CliError> {
    let mut out: Vec<OsString> = vec![argv[0].clone(), "mount".into(), "--daemon".into()];
    let mut paths = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let v = it
                    .next()
                    .ok_or_else(|| CliError::Usage("-o needs a value".into()))?;
                opts.extend(v.to_string_lossy().split(',').map(str::to_owned));
            }
            Some(s) if s.starts_with("-o") => {
                opts.extend(s[2..].split(',').map(str::to_owned));
            }
            // mount(8)'s own flags: -n (no mtab), -s (sloppy), -v (verbose); -t TYPE.
            Some("-n") | Some("-s") | Some("-v") => {}
            Some("-t") => {
                it.next();
            }
            Some("-f") => return Err(CliError::Usage("-f (fake mount) is not supported".into())),
            _ => paths.push(a.clone()),
        }
    }
    let [backing, mnt] = <[OsString; 2]>::try_from(paths).map_err(|p| {
        CliError::Usage(format!(
            "usage: mount.fuse.nacrithfs BACKING MOUNTPOINT [-o OPTIONS] (got {} paths)",
            p.len()
        ))
    })?;
    for o in opts.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o, None),
        };
        let flag = |name: &str| -> Result<[OsString; 2], CliError> {
            let v =
                v.ok_or_else(|| CliError::Usage(format!("option {k} needs a value ({k}=…)")))?;
            Ok([format!("--{name}").into(), v.into()])
        };
        match k {
            "allow_other" => out.push("--allow-other".into()),
            "suid" => out.push("--suid".into()),
            "dev" => out.push("--dev".into()),
            "cache_mb" => out.extend(flag("cache-mb")?),
            "read_ahead" => out.extend(flag("read-ahead")?),
            "settle_ms" => out.extend(flag("settle-ms")?),
            "max_file_mb" => out.extend(flag("max-file-mb")?),
            "chunk_size" => out.extend(flag("chunk-size")?),
            "ctx" => out.extend(flag("ctx")?),
            "slide" => out.extend(flag("slide")?),
            "window_mb" => out.extend(flag("window-mb")?),
            "jobs" => out.extend(flag("jobs")?),
            "workers" => out.extend(flag("workers")?),
            "streams" => out.extend(flag("streams")?),
            "threads" => out.extend(flag("threads")?),
            "model" => out.extend(flag("model")?),
            "backend" => out.extend(flag("backend")?),
            "device" => out.extend(flag("device")?),
            "log" => out.extend(flag("log")?),
            // What every mount takes, or what nacrithfs always does.
            "rw" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "nofail"
            | "_netdev" | "nosuid" | "nodev" | "exec" | "atime" | "noatime" | "relatime"
            | "default_permissions" | "fsname" | "subtype" => {}
            k if k.starts_with("x-") || k.starts_with("comment=") => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown mount option {o:?} (nacrithfs takes allow_other, cache_mb=, read_ahead=, settle_ms=, max_file_mb=, chunk_size=, ctx=, slide=, window_mb=, jobs=, workers=, streams=, threads=, model=, backend=, device=, log=, suid, dev)"
                )))
            }
        }
    }
    out.push(backing);
    out.push(mnt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_helper_forms_become_a_daemon_mount() {
        let subs = ["mount", "status"];
        let got = helper_args(
            &argv(&[
                "/sbin/mount.fuse.nacrithfs",
                "/srv/b",
                "/mnt/m",
                "-o",
                "rw,allow_other,cache_mb=32,x-systemd.automount",
            ]),
            &subs,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            argv(&[
                "/sbin/mount.fuse.nacrithfs",
                "mount",
                "--daemon",
                "--allow-other",
                "--cache-mb",
                "32",
                "/srv/b",
                "/mnt/m"
            ])
        );
        let got = helper_args(
            &argv(&[
                "nacrithfs",
                "/srv/b",
                "/mnt/m",
                "-o",
                "model=/m.gguf,jobs=2,backend=portable,device=cpu,ctx=1024,slide=256",
            ]),
            &subs,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            argv(&[
                "nacrithfs",
                "mount",
                "--daemon",
                "--model",
                "/m.gguf",
                "--jobs",
                "2",
                "--backend",
                "portable",
                "--device",
                "cpu",
                "--ctx",
                "1024",
                "--slide",
                "256",
                "/srv/b",
                "/mnt/m"
            ])
        );
        assert!(helper_args(&argv(&["nacrithfs", "status", "/mnt/m"]), &subs).is_none());
        assert!(helper_args(&argv(&["nacrithfs", "--version"]), &subs).is_none());
        assert!(matches!(
            helper_args(&argv(&["nacrithfs", "/b", "/m", "-o", "bogus"]), &subs),
            Some(Err(CliError::Usage(_)))
        ));
        assert!(matches!(
            helper_args(&argv(&["mount.nacrithfs", "/b"]), &subs),
            Some(Err(CliError::Usage(_)))
        ));
        assert!(matches!(
            helper_args(&argv(&["nacrithfs", "/b", "/m", "-o", "cache_mb"]), &subs),
            Some(Err(CliError::Usage(_)))
        ));
    }
}
