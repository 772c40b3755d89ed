//! Hardening of the backing store (real mounts, real model): path races that try to
//! aim the daemon outside BACKING, one daemon per backing directory, a private internal
//! directory, entries created as the caller, hard links that never lose data, and a
//! compressor that survives a panic.

#[path = "common/mount.rs"]
mod mount;

use mount::{bin, dirs, serial, Mount, Opts, Tmpfs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn model() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
}

fn listing(p: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn allow_other() -> Opts<'static> {
    Opts {
        allow_other: true,
        ..Default::default()
    }
}

/// The racer: as user nobody, in MNT/u, one thread swaps the directory `d` with a
/// symlink `s` to OUTSIDE (RENAME_EXCHANGE, through the mount) while others create
/// files, directories and symlinks in `d`, chown, chmod and setxattr a file there, and
/// list `d`. Any name of OUTSIDE seen in a listing is printed as a leak.
const RACER: &str = r#"
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
outside, secs = sys.argv[1], float(sys.argv[2])
secret = set(os.listdir(outside)) if os.access(outside, os.R_OK) else {"secret-name", "victim"}
os.mkdir("d"); os.symlink(outside, "s")
open("d/victim", "w").close()
stop = time.time() + secs
done = {"swap": 0, "create": 0, "mkdir": 0, "symlink": 0, "chown": 0, "chmod": 0, "xattr": 0, "list": 0}
def swapper():
    while time.time() < stop:
        if libc.renameat2(-100, b"d", -100, b"s", 2) == 0:
            done["swap"] += 1
def worker(k):
    i = 0
    while time.time() < stop:
        i += 1
        for op, f in (
            ("create", lambda: open("d/c%d_%d" % (k, i), "w").close()),
            ("mkdir", lambda: os.mkdir("d/m%d_%d" % (k, i))),
            ("symlink", lambda: os.symlink("t", "d/l%d_%d" % (k, i))),
            ("chown", lambda: os.chown("d/victim", 65534, 65534)),
            ("chmod", lambda: os.chmod("d/victim", 0o666)),
            ("xattr", lambda: os.setxattr("d/victim", "user.race", b"1")),
        ):
            try:
                f(); done[op] += 1
            except OSError:
                pass
        try:
            names = set(os.listdir("d")); done["list"] += 1
            if names & secret - {"victim"}:
                print("LEAK", sorted(names & secret), flush=True)
        except OSError:
            pass
ts = [threading.Thread(target=swapper)] + [threading.Thread(target=worker, args=(k,)) for k in range(3)]
for t in ts: t.start()
for t in ts: t.join()
print("DONE", done, flush=True)
"#;

#[test]
fn path_races_never_aim_the_daemon_outside_backing() {
    model();
    let _g = serial();
    let d = dirs();
    std::fs::set_permissions(d.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A private directory outside BACKING, with a root file that must stay as it is.
    let outside = d.root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"root's\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(outside.join("secret-name"), b"").unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    let outside_before = std::fs::metadata(&outside).unwrap();

    let m = Mount::start_with(&d.backing, &d.mnt, allow_other());
    let u = d.mnt.join("u");
    std::fs::create_dir(&u).unwrap();
    std::os::unix::fs::chown(&u, Some(65534), Some(65534)).unwrap();
    let secs = std::env::var("NACRITHFS_RACE_SECS").unwrap_or_else(|_| "20".into());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", RACER])
        .arg(&outside)
        .arg(&secs)
        .current_dir(&u)
        .output()
        .expect("setpriv python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("race: {}", stdout.trim());
    assert!(
        out.status.success(),
        "racer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.stop();

    assert!(
        !stdout.contains("LEAK"),
        "a listing showed names outside BACKING: {stdout}"
    );
    assert_eq!(
        listing(&outside),
        ["secret-name", "victim"],
        "an entry was created outside BACKING"
    );
    let now = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (
            now.uid(),
            now.gid(),
            now.mode(),
            now.ctime(),
            now.ctime_nsec()
        ),
        (
            before.uid(),
            before.gid(),
            before.mode(),
            before.ctime(),
            before.ctime_nsec()
        ),
        "the file outside BACKING was chowned, chmodded or had an xattr set"
    );
    assert!(nacrithfs_fs::store::xattr::llist_xattr(&victim)
        .unwrap()
        .is_empty());
    let o = std::fs::metadata(&outside).unwrap();
    assert_eq!(
        (o.uid(), o.mode()),
        (outside_before.uid(), outside_before.mode())
    );
    // The race really ran: swaps and every kind of operation happened.
    for op in ["swap", "create", "mkdir", "symlink", "chown", "list"] {
        assert!(
            !stdout.contains(&format!("'{op}': 0")),
            "the racer never managed a {op}: {stdout}"
        );
    }
}

#[test]
fn one_daemon_per_backing_and_a_real_internal_directory() {
    model();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("a.log");
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            log: Some(&log),
            ..Default::default()
        },
    );
    std::fs::write(d.mnt.join("a.bin"), vec![7u8; 5000]).unwrap();
    // A second daemon on the same BACKING is refused, with the first one's pid.
    let mnt2 = d.root.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let out = bin()
        .args(["mount", d.backing.to_str().unwrap(), mnt2.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "second mount: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("pid {}", m.pid())), "{err}");
    assert!(!mount::is_mountpoint(&mnt2));
    // So is a pack into it.
    let src = d.root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("x"), b"x").unwrap();
    let out = bin()
        .args(["pack", src.to_str().unwrap(), d.backing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "pack into a mounted backing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by"));
    // The first one still works, and its temporary files were left alone.
    m.wait();
    std::fs::write(d.mnt.join("b.bin"), vec![9u8; 5000]).unwrap();
    assert_eq!(std::fs::read(d.mnt.join("a.bin")).unwrap(), vec![7u8; 5000]);
    m.wait();
    assert_eq!(std::fs::read(d.mnt.join("b.bin")).unwrap(), vec![9u8; 5000]);
    // nosuid,nodev unless asked for.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(d.mnt.to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    m.stop();

    // A symlink in place of BACKING/.nacrithfs is refused; nothing is written there.
    let b2 = d.root.path().join("backing2");
    let elsewhere = d.root.path().join("elsewhere");
    std::fs::create_dir_all(&b2).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, b2.join(".nacrithfs")).unwrap();
    let out = bin()
        .args(["mount", b2.to_str().unwrap(), d.mnt.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("symlink"), "{err}");
    assert!(listing(&elsewhere).is_empty(), "wrote through the symlink");
    assert!(!mount::is_mountpoint(&d.mnt));
}

#[test]
fn entries_are_created_as_the_caller() {
    model();
    let _g = serial();
    let d = dirs();
    std::fs::set_permissions(d.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::start_with(&d.backing, &d.mnt, allow_other());
    // A setgid directory of group 65533 that nobody (65534) may write into.
    let g = d.mnt.join("g");
    std::fs::create_dir(&g).unwrap();
    std::os::unix::fs::chown(&g, Some(0), Some(65533)).unwrap();
    std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o2777)).unwrap();
    let ok = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
        ])
        .arg("umask 022 && echo x > f && mkdir sub && ln -s f l && mkfifo p")
        .current_dir(&g)
        .status()
        .unwrap()
        .success();
    assert!(ok, "nobody could not create entries in a 2777 directory");
    for name in ["f", "sub", "l", "p"] {
        let md = std::fs::symlink_metadata(d.backing.join("g").join(name)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (65534, 65533),
            "{name}: owner, or the setgid directory's group"
        );
    }
    let sub = std::fs::metadata(d.backing.join("g/sub")).unwrap();
    assert_ne!(
        sub.mode() & 0o2000,
        0,
        "a directory in a setgid directory keeps setgid"
    );
    // Set-id bits asked for at create survive (root's own file: nothing strips them).
    let ok = Command::new("sh")
        .arg("-c")
        .arg("install -m 4755 /dev/null suid && install -m 2755 /dev/null sgid")
        .current_dir(&d.mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(
        std::fs::metadata(d.backing.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(d.backing.join("sgid")).unwrap().mode() & 0o7777,
        0o2755
    );
    // security.capability survives compression (chown would drop it).
    let cap = d.mnt.join("cap.bin");
    std::fs::write(&cap, vec![3u8; 20_000]).unwrap();
    let ok = Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(&cap)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        m.wait();
        assert!(nacrithfs_fs::store::backing::is_blob_path(&d.backing.join("cap.bin")).unwrap());
        let out = Command::new("getcap")
            .arg(d.backing.join("cap.bin"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("cap_net_raw"),
            "security.capability lost in compression: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        eprintln!("hardening: setcap not available, security.capability not checked");
    }
    m.stop();
}

#[test]
fn a_panicking_compressor_is_survived_and_the_file_compressed_later() {
    model();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("d.log");
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            log: Some(&log),
            env: vec![("NACRITHFS_FAULT", "panic:1".into())],
            ..Default::default()
        },
    );
    std::fs::write(d.mnt.join("p.bin"), vec![5u8; 30_000]).unwrap();
    // wait returns although the compressor panicked...
    m.wait();
    let status = m.status();
    assert!(status.contains("\"failed\":1"), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("p.bin") && l.contains("panicked")),
        "no warning names the file: {text}"
    );
    // ...and the file is compressed at the retry.
    let t = Instant::now();
    while !nacrithfs_fs::store::backing::is_blob_path(&d.backing.join("p.bin")).unwrap() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never retried: {}",
            m.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read(d.mnt.join("p.bin")).unwrap(),
        vec![5u8; 30_000]
    );
    m.stop();
}

fn is_blob(p: &Path) -> bool {
    nacrithfs_fs::store::backing::is_blob_path(p).unwrap()
}

#[test]
fn hard_links_never_lose_data() {
    model();
    let _g = serial();
    let d = dirs();
    let _fs = Tmpfs::mount(&d.backing, "4m");
    let log = d.root.path().join("d.log");
    let opts = |fault: Option<&str>| Opts {
        log: Some(&log),
        env: fault
            .map(|f| vec![("NACRITHFS_FAULT", f.to_string())])
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut rng = mount::Rng(7);
    // 1.5 MB, half of it compressible: the blob is about half the plaintext.
    let a: Vec<u8> = rng.binary(1_500_000, 4096, |_| 0x80);
    let (pa, pb) = (d.mnt.join("a.bin"), d.mnt.join("b.bin"));
    let m = Mount::start_with(&d.backing, &d.mnt, opts(None));
    std::fs::write(&pa, &a).unwrap();
    m.wait();
    assert!(is_blob(&d.backing.join("a.bin")));

    // No room for the plaintext: the link fails with ENOSPC and the blob is intact.
    let filler = d.mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = rng.bytes(1 << 16);
        while f.write_all(&chunk).is_ok() {}
    }
    let e = std::fs::hard_link(&pa, &pb).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(!pb.exists() && is_blob(&d.backing.join("a.bin")));
    assert!(std::fs::read(&pa).unwrap() == a, "a.bin changed");
    std::fs::remove_file(&filler).unwrap();

    // A kill -9 at every step of the link's conversion: a.bin stays right, b.bin
    // appears only once the link is made.
    m.stop();
    for point in ["before-rename", "after-rename"] {
        let m = Mount::start_with(&d.backing, &d.mnt, opts(Some(&format!("{point}:5000"))));
        let from = std::fs::read_to_string(&log).unwrap().len();
        let (x, y) = (pa.clone(), pb.clone());
        let th = std::thread::spawn(move || std::fs::hard_link(x, y));
        let t = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap()
            .get(from..)
            .is_some_and(|s| s.contains(&format!("pausing 5000 ms {point}")))
        {
            assert!(t.elapsed() < Duration::from_secs(120), "{point}: no pause");
            std::thread::sleep(Duration::from_millis(20));
        }
        m.kill9();
        let _ = th.join();
        let m = Mount::start_with(&d.backing, &d.mnt, opts(None));
        assert!(std::fs::read(&pa).unwrap() == a, "{point}: a.bin changed");
        assert!(!pb.exists(), "{point}: b.bin made by an interrupted link");
        let left: Vec<_> = listing(&d.backing.join(".nacrithfs/tmp"))
            .into_iter()
            .filter(|n| !n.starts_with(&format!("{}-", m.pid())))
            .collect();
        assert!(left.is_empty(), "{point}: temporary files left: {left:?}");
        m.stop();
    }

    // The link itself, then writes through either name, across a remount.
    let m = Mount::start_with(&d.backing, &d.mnt, opts(None));
    std::fs::hard_link(&pa, &pb).unwrap();
    assert!(
        !is_blob(&d.backing.join("a.bin")),
        "a linked file is plaintext"
    );
    assert_eq!(std::fs::metadata(&pb).unwrap().nlink(), 2);
    let mut want = a.clone();
    want[1000..1005].copy_from_slice(b"HELLO");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&pb).unwrap();
        f.write_all_at(b"HELLO", 1000).unwrap();
    }
    m.wait();
    assert!(
        std::fs::read(&pa).unwrap() == want,
        "a write through b.bin not seen in a.bin"
    );
    m.stop();
    let m = Mount::start_with(&d.backing, &d.mnt, opts(None));
    m.wait();
    for p in [&pa, &pb] {
        assert!(
            std::fs::read(p).unwrap() == want,
            "{} after remount",
            p.display()
        );
        assert_eq!(std::fs::metadata(p).unwrap().nlink(), 2);
    }
    // One name gone: the other keeps everything.
    std::fs::remove_file(&pa).unwrap();
    assert!(std::fs::read(&pb).unwrap() == want);
    m.stop();
}
