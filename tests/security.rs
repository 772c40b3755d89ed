//! Security: the mount honours permissions (the kernel checks them: default_permissions;
//! other users get in only with --allow-other), no request makes the daemon leave
//! BACKING (`..`, `/` in names; symlinks are stored as links and never followed on the
//! backing side, also ones planted there by other tools), and the internal state under
//! BACKING/.nacrithfs cannot be reached or overwritten through the mount.

#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, serial, Mount, Opts};
use nacrithfs_fs::core::{Core, CoreConfig, ROOT_INO};
use nacrithfs_fs::store::{Backing, Caller, StandInCodec};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Runs `script` with sh as user and group nobody (65534); true when it succeeds.
fn as_nobody(script: &str) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

fn listing(p: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn core_refuses_names_that_leave_their_directory() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("backing");
    std::fs::create_dir(&root).unwrap();
    let core = Core::new(
        Backing::open(&root).unwrap(),
        Arc::new(StandInCodec::new(16)),
        CoreConfig::default(),
    )
    .unwrap();
    let before = listing(outer.path());
    for bad in ["..", ".", "../escape", "a/b", "", "/etc"] {
        let n = OsStr::new(bad);
        assert!(core.lookup(ROOT_INO, n).is_err(), "lookup {bad:?}");
        assert!(
            core.create(ROOT_INO, n, 0o644, libc::O_RDWR, &Caller::ROOT)
                .is_err(),
            "create {bad:?}"
        );
        assert!(
            core.mkdir(ROOT_INO, n, 0o755, &Caller::ROOT).is_err(),
            "mkdir {bad:?}"
        );
        assert!(
            core.symlink(ROOT_INO, n, Path::new("/etc/passwd"), &Caller::ROOT)
                .is_err(),
            "symlink {bad:?}"
        );
        assert!(
            core.mknod(ROOT_INO, n, libc::S_IFIFO | 0o644, 0, &Caller::ROOT)
                .is_err(),
            "mknod {bad:?}"
        );
        assert!(core.unlink(ROOT_INO, n).is_err(), "unlink {bad:?}");
        assert!(core.rmdir(ROOT_INO, n).is_err(), "rmdir {bad:?}");
    }
    let f = core
        .create(
            ROOT_INO,
            OsStr::new("f"),
            0o644,
            libc::O_RDWR,
            &Caller::ROOT,
        )
        .unwrap();
    core.release(f.1);
    for bad in ["..", "../f2", "x/y"] {
        assert!(
            core.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new(bad), 0)
                .is_err(),
            "rename to {bad:?}"
        );
        assert!(
            core.link(f.0.ino, ROOT_INO, OsStr::new(bad)).is_err(),
            "link to {bad:?}"
        );
    }
    // The internal directory is neither visible nor creatable at the root.
    assert!(core.lookup(ROOT_INO, OsStr::new(".nacrithfs")).is_err());
    assert!(core
        .mkdir(ROOT_INO, OsStr::new(".nacrithfs"), 0o755, &Caller::ROOT)
        .is_err());
    assert_eq!(
        listing(outer.path()),
        before,
        "something was created beside BACKING"
    );
    assert_eq!(listing(&root), [".nacrithfs", "f"]);
}

#[test]
fn permissions_symlinks_and_internal_state_through_the_mount() {
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let _g = serial();
    let d = dirs();
    std::fs::set_permissions(d.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Symlinks planted in BACKING by another tool, pointing out of it.
    let outside = d.root.path().join("outside.txt");
    std::fs::write(&outside, b"not yours\n").unwrap();
    std::os::unix::fs::symlink(&outside, d.backing.join("planted-file")).unwrap();
    std::os::unix::fs::symlink("/", d.backing.join("planted-dir")).unwrap();
    let outside_md = std::fs::metadata(&outside).unwrap();

    // Without --allow-other, nobody else gets in at all.
    let m = Mount::start(&d.backing, &d.mnt);
    let mnt = d.mnt.to_str().unwrap().to_string();
    assert!(
        !as_nobody(&format!("ls {mnt}")),
        "another user listed a mount without --allow-other"
    );
    m.stop();

    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            allow_other: true,
            ..Default::default()
        },
    );
    assert!(
        as_nobody(&format!("ls {mnt} >/dev/null")),
        "--allow-other: nobody cannot list"
    );
    // Modes are enforced by the kernel (default_permissions).
    std::fs::create_dir(d.mnt.join("pub")).unwrap();
    std::fs::write(d.mnt.join("pub/secret"), b"root only\n").unwrap();
    std::fs::set_permissions(
        d.mnt.join("pub/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(d.mnt.join("pub/open"), b"everyone reads\n").unwrap();
    std::fs::set_permissions(
        d.mnt.join("pub/open"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::create_dir(d.mnt.join("tmp")).unwrap();
    std::fs::set_permissions(d.mnt.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(d.mnt.join("tmp/roots"), b"r\n").unwrap();
    let checks: &[(&str, bool)] = &[
        ("cat pub/secret", false),
        ("cat pub/open", true),
        ("echo x >> pub/open", false),
        ("echo x > pub/new", false),
        ("chmod 666 pub/open", false),
        ("mkdir pub/d", false),
        ("rm -f tmp/roots", false), // sticky directory, someone else's file
        ("echo mine > tmp/mine && cat tmp/mine", true),
        ("chmod 600 tmp/mine", true),
    ];
    for (cmd, ok) in checks {
        assert_eq!(
            as_nobody(&format!("cd {mnt} && {cmd}")),
            *ok,
            "as nobody: {cmd}"
        );
    }
    let md = std::fs::symlink_metadata(d.backing.join("tmp/mine")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65534, 65534, 0o600),
        "owner and mode in BACKING"
    );

    // Symlinks are stored as links, whatever they point to.
    std::os::unix::fs::symlink("../../../../etc/passwd", d.mnt.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.mnt.join("abs")).unwrap();
    for (name, target) in [("up", "../../../../etc/passwd"), ("abs", "/etc/shadow")] {
        let b = d.backing.join(name);
        assert!(
            std::fs::symlink_metadata(&b)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name} is not a symlink in BACKING"
        );
        assert_eq!(std::fs::read_link(&b).unwrap(), Path::new(target));
        assert_eq!(
            std::fs::read_link(d.mnt.join(name)).unwrap(),
            Path::new(target)
        );
    }
    // Planted ones show as symlinks and are never compressed, opened or followed there.
    for name in ["planted-file", "planted-dir"] {
        assert!(
            std::fs::symlink_metadata(d.mnt.join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}"
        );
    }
    m.wait();
    let now = std::fs::metadata(&outside).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"not yours\n");
    assert_eq!(
        (now.ino(), now.mtime(), now.mtime_nsec()),
        (
            outside_md.ino(),
            outside_md.mtime(),
            outside_md.mtime_nsec()
        )
    );
    assert!(!nacrithfs_fs::store::backing::is_blob_path(&outside).unwrap());
    assert!(
        nacrithfs_fs::store::xattr::llist_xattr(&outside)
            .unwrap()
            .is_empty(),
        "xattrs set on a file outside BACKING"
    );

    // Internal state: invisible, unreachable, not creatable, not overwritable.
    let internal = d.mnt.join(".nacrithfs");
    assert!(!listing(&d.mnt).iter().any(|n| n == ".nacrithfs"));
    assert_eq!(
        std::fs::symlink_metadata(&internal)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    assert!(std::fs::read(internal.join("status.json")).is_err());
    assert!(std::fs::create_dir(&internal).is_err());
    assert!(std::fs::write(&internal, b"x").is_err());
    assert!(std::os::unix::fs::symlink("/tmp", &internal).is_err());
    assert!(std::fs::rename(d.mnt.join("pub/open"), &internal).is_err());
    assert!(std::fs::hard_link(d.mnt.join("pub/open"), &internal).is_err());
    let status = d.mnt.join(".nacrithfs-status");
    assert!(std::fs::read_to_string(&status)
        .unwrap()
        .contains("\"queued\""));
    assert!(std::fs::write(&status, b"{}").is_err());
    assert!(std::fs::remove_file(&status).is_err());
    assert!(std::fs::rename(d.mnt.join("pub/open"), &status).is_err());
    assert!(std::fs::metadata(d.mnt.join("pub/open")).is_ok());
    // Deeper down the name is an ordinary name.
    std::fs::create_dir(d.mnt.join("pub/.nacrithfs")).unwrap();
    // Reserved xattrs (the blob marker) can be neither read, listed nor set.
    let file = d.mnt.join("pub/open");
    let c = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.nacrithfs.state").unwrap();
    // SAFETY: c and name are NUL-terminated; the value is 4 valid bytes.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"nc06".as_ptr().cast(), 4, 0) };
    assert_eq!(r, -1, "reserved xattr set through the mount");
    assert!(nacrithfs_fs::store::xattr::lget_xattr(
        &file,
        name.as_c_str().to_str().unwrap().as_ref()
    )
    .unwrap()
    .is_none());
    // 15 bytes: kept plain (a blob would be bigger), its state marker hidden likewise.
    assert!(
        nacrithfs_fs::store::backing::is_kept_plain_path(&d.backing.join("pub/open")).unwrap(),
        "pub/open should be kept plain"
    );
    assert!(
        nacrithfs_fs::store::xattr::llist_xattr(&file)
            .unwrap()
            .is_empty(),
        "reserved xattr listed"
    );
    let tmp_mode = std::fs::metadata(d.backing.join(".nacrithfs/tmp"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(
        tmp_mode, 0o700,
        "BACKING/.nacrithfs/tmp holds plaintext of private files"
    );
    m.stop();
}
