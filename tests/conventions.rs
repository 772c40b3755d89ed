//! The conventions of FUSE filesystems (real mounts, real model): mount(8) and fstab,
//! `--daemon`, `umount`, the ready line and a quiet clean stop, `status --json`, files
//! that compression would not shrink, the systemd unit, completions, man page, version.

#[path = "common/mount.rs"]
mod mount;

use mount::{bin, dirs, is_mountpoint, serial, Mount};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn model() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
}

/// `/usr/local/bin/nacrithfs` linked to the binary under test for the guard's life:
/// mount.fuse3 runs `nacrithfs` for a `fuse.nacrithfs` mount, and mount(8) gives its
/// helpers a fixed PATH (this directory is in it). `None` where another nacrithfs is
/// installed there, which a test must not replace.
struct Installed(PathBuf);

impl Installed {
    fn new() -> Option<Installed> {
        let link = PathBuf::from("/usr/local/bin/nacrithfs");
        let exe = std::env::var_os("NACRITHFS_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nacrithfs")));
        if std::fs::symlink_metadata(&link).is_ok() {
            if std::fs::read_link(&link).ok() != Some(exe.clone()) {
                return None;
            }
            std::fs::remove_file(&link).unwrap();
        }
        std::fs::create_dir_all("/usr/local/bin").unwrap();
        std::os::unix::fs::symlink(exe, &link).unwrap();
        Some(Installed(link))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn umount(mnt: &Path) {
    let out = bin().args(["umount"]).arg(mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(mnt), "still mounted after umount returned");
}

fn status_json(mnt: &Path) -> serde_json::Value {
    let out = bin().args(["status", "--json"]).arg(mnt).output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn wait_idle(mnt: &Path) {
    let out = bin()
        .args(["wait", "--timeout", "300"])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mount_t_fuse_nacrithfs_and_an_fstab_line() {
    model();
    let _g = serial();
    let d = dirs();
    let Some(_installed) = Installed::new() else {
        eprintln!(
            "conventions: another nacrithfs is installed in /usr/local/bin; mount(8) not tested"
        );
        return;
    };
    // mount -t fuse.nacrithfs: mount(8) -> mount.fuse3 -> `nacrithfs BACKING MNT -o …`.
    let out = Command::new("mount")
        .args(["-t", "fuse.nacrithfs", "-o", "cache_mb=16,jobs=2"])
        .arg(&d.backing)
        .arg(&d.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.nacrithfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mountpoint(&d.mnt),
        "mount returned before the mount was up"
    );
    std::fs::write(d.mnt.join("x.bin"), vec![1u8; 10_000]).unwrap();
    wait_idle(&d.mnt);
    assert_eq!(status_json(&d.mnt)["compressed"], 1);
    umount(&d.mnt);
    // An fstab line, mounted by its mount point.
    let fstab = d.root.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# nacrithfs\n{} {} fuse.nacrithfs noauto,cache_mb=16,x-systemd.automount 0 0\n",
            d.backing.display(),
            d.mnt.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&d.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount via fstab: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(d.mnt.join("x.bin")).unwrap(),
        vec![1u8; 10_000]
    );
    umount(&d.mnt);
}

#[test]
fn daemon_returns_when_ready_and_fails_with_the_right_code() {
    model();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let out = bin()
        .args(["mount", "--daemon", "--log"])
        .arg(&log)
        .arg(&d.backing)
        .arg(&d.mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        is_mountpoint(&d.mnt),
        "--daemon returned before the mount was up"
    );
    assert!(
        err.contains("serving") && err.contains("nacrithfs umount"),
        "{err}"
    );
    umount(&d.mnt);
    // A bad backing directory: the error and its exit code come from the parent.
    let out = bin()
        .args(["mount", "--daemon", "/nonexistent/backing"])
        .arg(&d.mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("/nonexistent/backing"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!is_mountpoint(&d.mnt));
}

#[test]
fn ready_line_summary_and_a_clean_stop_without_warnings() {
    model();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("stderr.log");
    // systemd's side of Type=notify: the socket that $NOTIFY_SOCKET names.
    let sock_path = d.root.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let next_state = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("no sd_notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let child = bin()
        .arg("mount")
        .arg(&d.backing)
        .arg(&d.mnt)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    // READY=1 comes once the kernel has the mount, as systemd starts dependants then.
    let ready = next_state();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(is_mountpoint(&d.mnt), "READY=1 before the mount was up");
    // A 6-byte file stays plaintext (a blob would be ten times bigger).
    std::fs::write(d.mnt.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(d.mnt.join("big.bin"), vec![2u8; 50_000]).unwrap();
    wait_idle(&d.mnt);
    let s = status_json(&d.mnt);
    assert_eq!(
        (s["compressed"].as_u64(), s["kept_plain"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert!(!nacrithfs_fs::store::backing::is_blob_path(&d.backing.join("hello.txt")).unwrap());
    assert_eq!(std::fs::read(d.mnt.join("hello.txt")).unwrap(), b"hello\n");
    // What isatty(3) (editors, git) and lsattr ask of a file: "not a terminal", quietly.
    let f = std::fs::File::open(d.mnt.join("hello.txt")).unwrap();
    for cmd in [libc::TCGETS, 0x8008_6601 /* FS_IOC_GETFLAGS */] {
        let mut out = [0u8; 64];
        // SAFETY: ioctl(2) on an open fd; `out` is larger than either request's result.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                cmd as _,
                out.as_mut_ptr(),
            )
        };
        let e = std::io::Error::last_os_error();
        assert_eq!(
            (r, e.raw_os_error()),
            (-1, Some(libc::ENOTTY)),
            "ioctl {cmd:#x}"
        );
    }
    drop(f);
    let text = String::from_utf8_lossy(&bin().arg("status").arg(&d.mnt).output().unwrap().stdout)
        .into_owned();
    assert!(
        text.contains("kept plain 1") && text.contains(":1 original/stored"),
        "{text}"
    );
    // SIGTERM: a clean stop, with its summary and not one warning.
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = next_state();
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.lines().next().is_some_and(|l| l.contains("serving")),
        "{stderr}"
    );
    assert!(
        stderr.contains("unmounted") && stderr.contains("compressed 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    // Kept plain survives a remount (what a service restart does): not queued again.
    let m = Mount::start(&d.backing, &d.mnt);
    assert_eq!(status_json(&d.mnt)["queued"], 0);
    m.stop();
}

#[test]
fn umount_is_refused_while_busy_unless_lazy() {
    model();
    let _g = serial();
    let d = dirs();
    let out = bin()
        .args(["mount", "--daemon"])
        .arg(&d.backing)
        .arg(&d.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let f = std::fs::File::create(d.mnt.join("open")).unwrap();
    let out = bin().arg("umount").arg(&d.mnt).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mountpoint(&d.mnt));
    drop(f);
    umount(&d.mnt);
}

#[test]
fn systemd_unit_completions_man_page_and_version() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/nacrithfs.service");
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let exe = std::env::var("NACRITHFS_TEST_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nacrithfs").to_string());
            let text = std::fs::read_to_string(&unit)
                .unwrap()
                .replace("/usr/local/bin/nacrithfs", &exe);
            let copy = dir.path().join("nacrithfs.service");
            std::fs::write(&copy, text).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "systemd-analyze verify: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => eprintln!("conventions: systemd-analyze not found, the unit was not verified"),
    }
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("nacrithfs"));
    let out = bin().arg("man").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(".TH"));
    let out = bin().arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && v.contains("NC06 container version"),
        "{v}"
    );
    assert!(v.contains("fingerprint") || v.contains("model "), "{v}");
    // Which backends this build has: blobs of a missing one cannot be read.
    assert!(v.contains("backends: portable (spec 1), llama"), "{v}");
}
