//! Writes into compressed files through a live mount with the real model: an append
//! or an overwrite goes to the file's overlay log without decoding any text chunk, and
//! when the file is compressed again its untouched chunks are copied into the new blob
//! byte for byte, so only what changed goes to the model. Survives kill -9 and a
//! remount. Needs root and /dev/fuse (as CI has).

#[path = "common/blobs.rs"]
mod blobs;
#[path = "common/mount.rs"]
mod mount;

use blobs::copied_chunks;

use mount::{dirs, serial, Mount, Opts};
use nacrithfs_fs::Status;
use nc06::format::Blob;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const ENGLISH: &str = include_str!("data/english.txt");
const MULTILINGUAL: &str = include_str!("data/multilingual.txt");

fn status(m: &Mount) -> Status {
    Status::from_json(&m.status()).expect("status")
}

fn state(p: &Path) -> Option<Vec<u8>> {
    nacrithfs_fs::store::xattr::lget_xattr(p, OsStr::new("user.nacrithfs.state")).unwrap()
}

/// Writes `bytes` at `at` of `file` through the mount, and into `want`.
fn write_at(file: &Path, want: &mut [u8], at: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
    want[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// Appends `line` to `file` through the mount, and to `want`.
fn append(file: &Path, want: &mut Vec<u8>, line: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap()
        .write_all(line)
        .unwrap();
    want.extend_from_slice(line);
}

#[test]
fn a_mount_with_another_window_codes_new_files_with_it_and_keeps_each_old_file_s() {
    let _g = serial();
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let d = dirs();
    let small = nc06::Window {
        ctx: 256,
        slide: 64,
    };
    let opts = |args: Vec<&'static str>| Opts {
        args: [vec!["--chunk-size", "700"], args].concat(),
        ..Default::default()
    };
    let (file, backed) = (d.mnt.join("notes.txt"), d.backing.join("notes.txt"));
    let mut want = ENGLISH.as_bytes().to_vec();
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        opts(vec!["--ctx", "256", "--slide", "64"]),
    );
    std::fs::write(&file, &want).unwrap();
    m.wait();
    m.stop();
    let first = Blob::parse(&std::fs::read(&backed).unwrap()).unwrap();
    assert_eq!(first.header.window, small);
    assert!(first.chunks.len() >= 2, "{} chunks", first.chunks.len());

    // A mount with the default window: an append keeps the file's window, so every
    // old chunk is copied, none coded again.
    let m = Mount::start_with(&d.backing, &d.mnt, opts(vec![]));
    append(&file, &mut want, b"An appended line.\n");
    std::fs::write(d.mnt.join("new.txt"), ENGLISH).unwrap();
    m.wait();
    let second = Blob::parse(&std::fs::read(&backed).unwrap()).unwrap();
    assert_eq!(second.header.window, small);
    assert_eq!(copied_chunks(&first, &second), first.chunks.len());
    let new = Blob::parse(&std::fs::read(d.backing.join("new.txt")).unwrap()).unwrap();
    assert_eq!(new.header.window, nc06::Window::default());
    assert_eq!(std::fs::read(&file).unwrap(), want);
    m.stop();
    let m = Mount::start(&d.backing, &d.mnt);
    assert_eq!(std::fs::read(&file).unwrap(), want);
    assert_eq!(
        std::fs::read(d.mnt.join("new.txt")).unwrap(),
        ENGLISH.as_bytes()
    );
    m.stop();
}

#[test]
fn appends_and_overwrites_of_a_compressed_text_decode_only_what_they_touch() {
    let _g = serial();
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let opts = || Opts {
        log: Some(&log),
        args: vec!["--chunk-size", "700"],
        ..Default::default()
    };
    let (file, backed) = (d.mnt.join("notes.txt"), d.backing.join("notes.txt"));
    let mut want = format!("{ENGLISH}\n{MULTILINGUAL}").into_bytes();

    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    std::fs::write(&file, &want).unwrap();
    m.wait();
    m.stop();
    let first = Blob::parse(&std::fs::read(&backed).unwrap()).unwrap();
    assert!(first.chunks.len() >= 3, "{} chunks", first.chunks.len());

    // Cold mount: an append returns without the model, and its bytes read back from
    // the log, still without the model.
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    let line = b"An appended line, as a log file gets them.\n";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(line).unwrap();
    f.sync_all().unwrap();
    assert_eq!(status(&m).model_decodes, 0, "the append decoded a chunk");
    // O_DIRECT: the kernel asks for these bytes alone, not for the pages around them.
    let mut tail = vec![0u8; line.len()];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .unwrap()
        .read_exact_at(&mut tail, want.len() as u64)
        .unwrap();
    assert_eq!(tail, line);
    want.extend_from_slice(line);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), want.len() as u64);
    assert_eq!(status(&m).model_decodes, 0, "the append decoded a chunk");
    drop(f);
    // A crash now, whether before or after the compressor got to the file.
    m.kill9();

    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    m.wait();
    assert_eq!(
        status(&m).model_decodes,
        0,
        "compressing again decoded a chunk"
    );
    assert_eq!(state(&backed).as_deref(), Some(&b"nc06"[..]));
    let second = Blob::parse(&std::fs::read(&backed).unwrap()).unwrap();
    assert_eq!(
        copied_chunks(&first, &second),
        first.chunks.len(),
        "every old chunk is in the new blob as it was"
    );

    // An overwrite inside one chunk: that chunk alone is decoded and coded again.
    let middle = second
        .index()
        .extents
        .into_iter()
        .find(|e| e.kind == nc06::format::ExtentKind::Text && e.chunk == 1)
        .unwrap();
    let at = middle.orig_offset + 5;
    write_at(&file, &mut want, at, b"EDIT");
    assert_eq!(state(&backed).as_deref(), Some(&b"nc06+log"[..]));
    m.wait();
    assert_eq!(
        status(&m).model_decodes,
        1,
        "only the edited chunk was decoded"
    );
    // The edited chunk is cached as it was just coded: reading it back (past the
    // kernel's page cache) runs no model.
    let mut back = vec![0u8; 64];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .unwrap()
        .read_exact_at(&mut back, middle.orig_offset)
        .unwrap();
    let from = middle.orig_offset as usize;
    assert_eq!(back, want[from..from + 64]);
    assert_eq!(
        status(&m).model_decodes,
        1,
        "the edited chunk was decoded to read it back"
    );
    let third = Blob::parse(&std::fs::read(&backed).unwrap()).unwrap();
    assert!(
        copied_chunks(&second, &third) >= second.chunks.len() - 1,
        "the chunks the edit did not touch are copied"
    );
    m.stop();

    // Everything reads back, cold, from the new blob.
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    assert_eq!(std::fs::read(&file).unwrap(), want);
    let read = status(&m).model_decodes;
    assert!(read >= third.chunks.len() as u64, "{read} chunks decoded");
    // What was decoded stays decoded through a compression again: an append, then an
    // edit whose compression needs the rest of its chunk, decode nothing more.
    append(&file, &mut want, b"Another line.\n");
    m.wait();
    write_at(&file, &mut want, at, b"TIDE");
    m.wait();
    assert_eq!(
        status(&m).model_decodes,
        read,
        "a chunk decoded before the append was decoded again"
    );
    m.stop();
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    assert_eq!(std::fs::read(&file).unwrap(), want);
    m.stop();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{text}");
}
