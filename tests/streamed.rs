//! A file larger than the compression window, through a live mount with the real
//! model (`--window-mb 1`, so a few MiB take several windows): random bytes, text
//! on both sides of a window's end and a hole. It is compressed a window at a time;
//! its blob holds the text as chunks and the hole as a zero extent (NC06 version 2);
//! it reads back cold byte for byte; `SEEK_HOLE`/`SEEK_DATA` find the hole; and after
//! an append it is compressed again, in windows, to the same bytes plus the append,
//! its untouched text chunks copied as they were.
//! Needs root and /dev/fuse (as CI has).

#[path = "common/blobs.rs"]
mod blobs;
#[path = "common/mount.rs"]
mod mount;

use mount::{dirs, serial, Mount, Opts, Rng};
use nc06::format::{Blob, ExtentKind};
use std::io::Write;
use std::os::fd::AsRawFd;

const ENGLISH: &str = include_str!("data/english.txt");
const MULTILINGUAL: &str = include_str!("data/multilingual.txt");
const MIB: usize = 1 << 20;

fn seek(f: &std::fs::File, off: i64, whence: i32) -> std::io::Result<i64> {
    // SAFETY: lseek on an fd `f` owns; it changes only that file's offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[test]
fn a_file_larger_than_the_window_is_compressed_window_by_window() {
    let _g = serial();
    nacrithfs_engine::model::resolve_model_path(None)
        .expect("model missing: run scripts/fetch-model.sh");
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let opts = || Opts {
        log: Some(&log),
        args: vec!["--window-mb", "1"],
        env: vec![("RUST_LOG", "info,nacrithfs=debug".to_string())],
        ..Default::default()
    };
    let mut rng = Rng(0x5eed);
    // random | text across the first window's end | random | hole | random | text
    let mut want = rng.bytes(MIB - 600);
    want.extend_from_slice(ENGLISH.as_bytes());
    want.extend(rng.bytes(MIB / 2));
    want.push(0xff);
    let hole = want.len();
    want.resize(hole + MIB + MIB / 2, 0);
    let hole_end = want.len();
    want.push(0xff);
    want.extend(rng.bytes(MIB / 3));
    want.extend_from_slice(MULTILINGUAL.as_bytes());
    let (file, backed) = (d.mnt.join("mixed.bin"), d.backing.join("mixed.bin"));

    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    std::fs::write(&file, &want).unwrap();
    m.wait();
    m.stop();
    let stored = std::fs::read(&backed).unwrap();
    let blob = Blob::parse(&stored).expect("a blob, whole");
    assert_eq!(stored[4], 2, "a blob with a zero extent is version 2");
    let kinds: Vec<ExtentKind> = blob.extents.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&ExtentKind::Zero), "{kinds:?}");
    assert_eq!(
        blob.chunks.len(),
        2,
        "both texts coded by the model: {kinds:?}"
    );
    assert!(
        (stored.len() as usize) < want.len() - MIB,
        "the hole costs nothing: {} bytes stored",
        stored.len()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("in windows of 1048576"),
        "compressed in windows: {log_text}"
    );

    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    let got = std::fs::read(&file).unwrap();
    assert!(got == want, "read back differs");
    let f = std::fs::File::open(&file).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap() as usize, hole);
    let data = seek(&f, hole as i64, libc::SEEK_DATA).unwrap() as usize;
    assert!(data > hole && data <= hole_end, "data again at {data}");
    let end = want.len() as i64;
    assert_eq!(seek(&f, end - 1, libc::SEEK_HOLE).unwrap(), end);
    assert_eq!(
        seek(&f, end, libc::SEEK_DATA).unwrap_err().raw_os_error(),
        Some(libc::ENXIO)
    );
    drop(f);

    // An append, then a compression again: the texts are copied as they are, and the
    // bytes between them read and framed again a window at a time.
    let tail = b"\nappended after the first compression\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(tail)
        .unwrap();
    want.extend_from_slice(tail);
    m.wait();
    m.stop();
    let again = Blob::parse(&std::fs::read(&backed).unwrap()).expect("compressed again");
    assert_eq!(again.header.original_len, want.len() as u64);
    // Both texts are copied, stream for stream, in windows: nothing is held whole.
    assert_eq!(
        blobs::copied_chunks(&blob, &again),
        2,
        "the untouched text chunks are copied as they were"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("compressed again: 2 of 2 text chunks"),
        "{log_text}"
    );
    let m = Mount::start_with(&d.backing, &d.mnt, opts());
    assert!(
        std::fs::read(&file).unwrap() == want,
        "read back after the append differs"
    );
    m.stop();
}
