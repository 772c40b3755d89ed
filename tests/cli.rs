//! The `nacrithfs` binary: compress/decompress/info, stdin/stdout, and the bad-input
//! contract — one line on stderr, a non-zero exit code, no output file, never a panic.

mod common;

use common::{noise, ENGLISH};
use nc06::format::Blob;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nacrithfs"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn nacrithfs")
}

/// Runs the binary with `input` on stdin and stdout captured.
fn pipe(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn assert_clean_failure(out: &Output, output_file: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("nacrithfs: "), "{what}: {stderr}");
    assert!(!output_file.exists(), "{what}: left an output file");
}

#[test]
fn compress_decompress_info_and_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..250]).unwrap();
    let out = run(&["compress", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = dir.path().join("a.txt.nc06");
    assert_eq!(&std::fs::read(&blob).unwrap()[..4], b"NC06");
    // Refuses to overwrite without --force.
    let again = run(&["compress", input.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(73));
    // Decompress to stdout.
    let out = run(&["decompress", blob.to_str().unwrap(), "-o", "-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, &ENGLISH.as_bytes()[..250]);
    // stdin to stdout, both ways.
    let piped = pipe(&["compress", "-"], b"hello, world\n");
    assert!(piped.status.success());
    assert_eq!(
        pipe(&["decompress", "-"], &piped.stdout).stdout,
        b"hello, world\n"
    );
    let info = run(&["info", blob.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success() && text.contains("NC06 version 1") && text.contains("can decode"),
        "{text}"
    );
}

#[test]
fn bad_blobs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..200]).unwrap();
    let good = dir.path().join("t.nc06");
    assert!(run(&[
        "compress",
        input.to_str().unwrap(),
        "-o",
        good.to_str().unwrap()
    ])
    .status
    .success());
    let blob = std::fs::read(&good).unwrap();
    let mut foreign = Blob::parse(&blob).unwrap();
    foreign.header.fingerprint.model[3] ^= 0xff;
    let mut corrupt = blob.clone();
    let n = corrupt.len();
    corrupt[n - 3] ^= 0xff;
    corrupt[n - 30] ^= 0x0f;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", blob[..blob.len() / 2].to_vec()),
        ("corrupted", corrupt),
        ("wrong magic", [b"XC06".as_slice(), &blob[4..]].concat()),
        ("random bytes", noise(500, 3)),
        ("another model", foreign.to_bytes()),
        ("empty file", Vec::new()),
    ];
    for (what, bytes) in cases {
        let bad = dir.path().join("bad.nc06");
        std::fs::write(&bad, bytes).unwrap();
        let out_file = dir.path().join("bad.out");
        let out = run(&[
            "decompress",
            bad.to_str().unwrap(),
            "-o",
            out_file.to_str().unwrap(),
        ]);
        assert_clean_failure(&out, &out_file, what);
        assert!(
            matches!(out.status.code(), Some(65)),
            "{what}: exit {:?}",
            out.status.code()
        );
        let info = run(&["info", bad.to_str().unwrap()]);
        if what != "another model" && what != "corrupted" {
            assert_clean_failure(&info, &out_file, what);
        }
    }
}

#[test]
fn missing_inputs_and_models_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("o");
    let out = run(&[
        "compress",
        "/nonexistent/file",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &out_file, "missing input");
    assert_eq!(out.status.code(), Some(66));
    let input = dir.path().join("i.txt");
    std::fs::write(&input, b"some text").unwrap();
    let out = bin()
        .args([
            "compress",
            input.to_str().unwrap(),
            "-o",
            out_file.to_str().unwrap(),
        ])
        .env("NACRITHFS_MODEL", "/nonexistent/model.gguf")
        .output()
        .unwrap();
    assert_clean_failure(&out, &out_file, "missing model");
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/fetch-model.sh"));
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, noise(1000, 1)).unwrap();
    let out = run(&[
        "compress",
        input.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
        "--model",
        junk.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &out_file, "junk model");
}

#[test]
fn non_utf8_names_keep_their_bytes_and_the_summary_is_shown() {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let dir = tempfile::tempdir().unwrap();
    let name = OsString::from_vec(b"caf\xe9 notes.txt".to_vec());
    let input = dir.path().join(&name);
    std::fs::write(&input, &ENGLISH.as_bytes()[..120]).unwrap();
    let out = bin().arg("compress").arg(&input).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary is visible without RUST_LOG, on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("nacrithfs: ") && stderr.contains("-> ") && stderr.contains("bits/byte"),
        "{stderr}"
    );
    let mut blob_name = name.clone();
    blob_name.push(".nc06");
    let blob = dir.path().join(&blob_name);
    assert!(blob.exists(), "the .nc06 name lost the name's bytes");
    std::fs::remove_file(&input).unwrap();
    let out = bin().arg("decompress").arg(&blob).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&input).unwrap(), &ENGLISH.as_bytes()[..120]);
    assert!(input.as_os_str().as_bytes().ends_with(b"caf\xe9 notes.txt"));
    // --quiet silences the summary.
    let again = bin()
        .args(["compress", "-q", "-f"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(again.status.success() && again.stderr.is_empty());
}

#[test]
fn mix_params_of_the_wrong_length_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, b"text").unwrap();
    let out = run(&["bench-ensemble", f.to_str().unwrap(), "--mix-params", "1,2"]);
    assert_clean_failure(&out, &dir.path().join("none"), "short --mix-params");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("7 values"));
}

#[test]
fn models_are_taken_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..300]).unwrap();
    // The default model by its name: the same blob as without --model.
    let out_default = dir.path().join("a.nc");
    let out_named = dir.path().join("b.nc");
    for (args, out) in [
        (vec![], &out_default),
        (vec!["--model", "smollm2-135m"], &out_named),
    ] {
        let o = bin()
            .arg("compress")
            .args(&args)
            .args(["--no-verify", "-q"])
            .arg(&input)
            .arg("-o")
            .arg(out)
            .env_remove("NACRITHFS_MODEL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        std::fs::read(&out_default).unwrap(),
        std::fs::read(&out_named).unwrap()
    );
    // A known model that is not fetched: exit 69 and the command that fetches it, from
    // --model and from $NACRITHFS_MODEL alike.
    let empty_cache = tempfile::tempdir().unwrap();
    for by_env in [false, true] {
        let mut c = bin();
        c.arg("compress")
            .arg(&input)
            .arg("-o")
            .arg(dir.path().join("c.nc"));
        if by_env {
            c.env("NACRITHFS_MODEL", "gemma3-270m");
        } else {
            c.args(["--model", "gemma3-270m"])
                .env_remove("NACRITHFS_MODEL");
        }
        let o = c
            .env("XDG_CACHE_HOME", empty_cache.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(69), "{err}");
        assert!(err.contains("scripts/fetch-model.sh gemma3-270m"), "{err}");
    }
}

/// Output into a pipe that was closed (`nacrithfs info X | head -1`): the command ends
/// by SIGPIPE, as other tools do, and never panics.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two fds, which are then owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are fresh from pipe(2) and owned only here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = bin()
        .arg("--version")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `nacrithfs decompress BLOB -o OUT`, 1 MiB at a time.
fn decompress_windows(blob: &Path, out: &Path) -> Output {
    let (blob, out) = (blob.to_str().unwrap(), out.to_str().unwrap());
    run(&["decompress", blob, "-o", out, "--window-mb", "1"])
}

/// An input larger than `--window-mb` is compressed and decompressed a window at a
/// time (never held whole): from a file and from a pipe, to a file and to stdout, it
/// comes back byte for byte, and a damaged streamed blob fails cleanly.
#[test]
fn inputs_larger_than_the_window_stream() {
    let dir = tempfile::tempdir().unwrap();
    // 3.5 MiB: noise, bytes that are never UTF-8 but compress, a little English
    // (coded by the model), more noise.
    let mib = 1 << 20;
    let mut data = noise(mib, 7);
    data.extend((0..mib).map(|i| 0xf8 + ((i % 7) * (i % 3) % 8) as u8));
    data.extend_from_slice(&ENGLISH.as_bytes()[..300]);
    data.extend(noise(3 * mib / 2, 8));
    let input = dir.path().join("big.bin");
    std::fs::write(&input, &data).unwrap();
    let blob = dir.path().join("big.bin.nc06");
    let out = run(&["compress", input.to_str().unwrap(), "--window-mb", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = std::fs::read(&blob).unwrap();
    assert!(
        stored.len() < data.len() - mib / 2,
        "{} bytes",
        stored.len()
    );
    let parsed = Blob::parse(&stored).unwrap();
    assert_eq!(parsed.header.original_len, data.len() as u64);
    // Back to a file and to stdout, a window at a time.
    let back = dir.path().join("back.bin");
    let out = decompress_windows(&blob, &back);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == data, "file output differs");
    let out = run(&[
        "decompress",
        blob.to_str().unwrap(),
        "-o",
        "-",
        "--window-mb",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "stdout differs");
    // From a pipe to stdout, then back through a pipe.
    let piped = pipe(&["compress", "-", "-q", "--window-mb", "1"], &data);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        piped.stdout == stored,
        "the piped blob differs from the file's"
    );
    let back = pipe(&["decompress", "-"], &piped.stdout);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(back.stdout == data, "piped round trip differs");
    // An existing output is refused before anything is coded.
    let out = run(&["compress", input.to_str().unwrap(), "--window-mb", "1"]);
    assert_eq!(out.status.code(), Some(73));
    // Damage in the last frame: a clean failure, no output.
    let mut bad = stored.clone();
    let n = bad.len();
    bad[n - 1000] ^= 0x40;
    let bad_blob = dir.path().join("bad.nc06");
    std::fs::write(&bad_blob, &bad).unwrap();
    let out_file = dir.path().join("bad.out");
    let out = decompress_windows(&bad_blob, &out_file);
    assert_clean_failure(&out, &out_file, "damaged streamed blob");
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn a_portable_blob_decodes_without_naming_its_backend_and_ignores_threads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..300]).unwrap();
    let i = input.to_str().unwrap();
    let mut blobs = Vec::new();
    for (name, threads) in [("one.nc06", "1"), ("two.nc06", "2")] {
        let o = dir.path().join(name);
        let out = run(&[
            "compress",
            i,
            "-o",
            o.to_str().unwrap(),
            "--backend",
            "portable",
            "--threads",
            threads,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        blobs.push(std::fs::read(&o).unwrap());
    }
    assert!(blobs[0] == blobs[1], "the thread count changed the blob");
    let blob = dir.path().join("one.nc06");
    let info = run(&["info", blob.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("portable backend") && text.contains("can decode"),
        "{text}"
    );
    let back = dir.path().join("back.txt");
    let out = run(&[
        "decompress",
        blob.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&input).unwrap());
    // An unknown backend is a usage error, like every other bad option (clap's 2).
    let bad = run(&["compress", i, "-o", "/dev/null", "--backend", "cuda"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("auto, llama or portable"), "{err}");
    // So is an unknown device; a known one codes the same blob as any other.
    let bad = run(&["compress", i, "-o", "/dev/null", "--device", "gpu"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("auto, cpu or cuda"), "{err}");
}
