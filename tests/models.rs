//! Blobs of more than one model: a mount decodes each blob with the model that coded
//! it, whichever is its default, and a blob whose model is not at hand is EIO with a
//! log line that names the model and the command that fetches it.
//!
//! The tests that need Gemma 3 270M run only where it is fetched (240 MB; CI fetches it
//! with `NACRITHFS_CI_GEMMA=1 bash .ci/run`) and say SKIP otherwise.

#[path = "common/mount.rs"]
mod mount;

use mount::{bin, dirs, serial, Mount, Opts};
use nacrithfs_engine::model::{cache_dir, known_model, resolve_model_path};
use nacrithfs_fs::store::backing::is_blob_path;
use nc06::format::Blob;
use std::path::{Path, PathBuf};

const ENGLISH: &str = include_str!("data/english.txt");

fn smollm2() -> PathBuf {
    resolve_model_path(None).expect("model missing: run scripts/fetch-model.sh")
}

/// Gemma's cached file, or None after saying SKIP for `test`.
fn gemma(test: &str) -> Option<PathBuf> {
    let p = cache_dir().join(known_model("gemma3-270m").expect("known").file);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIP {test}: gemma3-270m is not fetched (scripts/fetch-model.sh gemma3-270m, \
             or NACRITHFS_CI_GEMMA=1 bash .ci/run)"
        );
        None
    }
}

/// The first 8 bytes of a known model's SHA-256: what a blob's fingerprint holds.
fn digest_of(name: &str) -> [u8; 8] {
    let hex = known_model(name).expect("known").sha256;
    let mut d = [0; 8];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    d
}

fn mount_with(backing: &Path, mnt: &Path, model: &Path, log: &Path, args: &[&str]) -> Mount {
    Mount::start_with(
        backing,
        mnt,
        Opts {
            model: Some(model),
            log: Some(log),
            args: args.to_vec(),
            ..Default::default()
        },
    )
}

/// Writes `files` through a mount of `model` (with `args`) and waits until they are
/// blobs.
fn write_blobs(
    backing: &Path,
    mnt: &Path,
    (model, args): (&Path, &[&str]),
    log: &Path,
    files: &[(&str, &[u8])],
) {
    let m = mount_with(backing, mnt, model, log, args);
    for (name, data) in files {
        std::fs::write(mnt.join(name), data).unwrap();
    }
    m.wait();
    m.stop();
    for (name, _) in files {
        assert!(
            is_blob_path(&backing.join(name)).unwrap(),
            "{name} not a blob"
        );
    }
}

#[test]
fn a_blob_whose_model_is_not_fetched_is_eio_and_the_log_names_the_model() {
    let real = smollm2();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let en = ENGLISH.as_bytes()[..300].to_vec();
    write_blobs(&d.backing, &d.mnt, (&real, &[]), &log, &[("en.txt", &en)]);
    // The same blob, now claiming Gemma's weights (every CRC still valid), in a cache
    // without Gemma.
    let path = d.backing.join("en.txt");
    let mut blob = Blob::parse(&std::fs::read(&path).unwrap()).unwrap();
    blob.header.fingerprint.model = digest_of("gemma3-270m");
    std::fs::write(&path, blob.to_bytes()).unwrap();
    let empty_cache = d.root.path().join("cache");
    std::fs::create_dir_all(empty_cache.join("nacrithfs")).unwrap();
    let cache = empty_cache.to_str().unwrap().to_string();
    let m = Mount::start_with(
        &d.backing,
        &d.mnt,
        Opts {
            model: Some(&real),
            log: Some(&log),
            env: vec![("XDG_CACHE_HOME", cache.clone())],
            ..Default::default()
        },
    );
    let e = std::fs::read(d.mnt.join("en.txt")).expect_err("decoded without its model");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    m.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("en.txt") && l.contains("gemma3-270m"))
        .unwrap_or_else(|| panic!("no log line names the file and the model:\n{text}"));
    assert!(
        line.contains("scripts/fetch-model.sh gemma3-270m"),
        "{line}"
    );

    // The CLI says the same, with the model's exit code for data it cannot decode.
    let out = bin()
        .args(["decompress", path.to_str().unwrap(), "-o", "-"])
        .env("XDG_CACHE_HOME", &cache)
        .env("NACRITHFS_MODEL", &real)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/fetch-model.sh gemma3-270m"), "{err}");
}

#[test]
fn one_mount_reads_blobs_of_both_models_whichever_is_its_default() {
    let Some(gemma) = gemma("one_mount_reads_blobs_of_both_models_whichever_is_its_default") else {
        return;
    };
    let smol = smollm2();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let a = ENGLISH.as_bytes()[..260].to_vec();
    let b = "Ein kurzer Satz auf Deutsch, und une phrase en français: ça marche.\n"
        .repeat(3)
        .into_bytes();
    write_blobs(&d.backing, &d.mnt, (&smol, &[]), &log, &[("smol.txt", &a)]);
    write_blobs(
        &d.backing,
        &d.mnt,
        (&gemma, &[]),
        &log,
        &[("gemma.txt", &b)],
    );
    let fp = |name: &str| {
        Blob::parse(&std::fs::read(d.backing.join(name)).unwrap())
            .unwrap()
            .header
            .fingerprint
            .model
    };
    assert_eq!(fp("smol.txt"), digest_of("smollm2-135m"));
    assert_eq!(fp("gemma.txt"), digest_of("gemma3-270m"));
    // Each daemon starts cold: nothing decoded is cached from before.
    for default in [&smol, &gemma] {
        let m = mount_with(&d.backing, &d.mnt, default, &log, &[]);
        assert_eq!(std::fs::read(d.mnt.join("smol.txt")).unwrap(), a);
        assert_eq!(std::fs::read(d.mnt.join("gemma.txt")).unwrap(), b);
        m.stop();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for name in ["smollm2-135m", "gemma3-270m"] {
        assert!(
            text.contains(&format!("loaded model {name}")),
            "the mount of the other model did not load {name}:\n{text}"
        );
    }

    // `unpack` (with either default) decodes each blob with its own model too.
    for default in ["smollm2-135m", "gemma3-270m"] {
        let out = d.root.path().join(format!("out-{default}"));
        let st = bin()
            .args(["unpack", d.backing.to_str().unwrap(), out.to_str().unwrap()])
            .args(["--model", default])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "unpack --model {default}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(std::fs::read(out.join("smol.txt")).unwrap(), a);
        assert_eq!(std::fs::read(out.join("gemma.txt")).unwrap(), b);
    }

    // `decompress` picks the blob's own model when none is named.
    for (name, want) in [("smol.txt", &a), ("gemma.txt", &b)] {
        let out = bin()
            .args([
                "decompress",
                d.backing.join(name).to_str().unwrap(),
                "-o",
                "-",
            ])
            .env_remove("NACRITHFS_MODEL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&out.stdout, want, "{name}");
    }
}

/// Gemma's 262,144-token vocabulary is coded at 2^28 (container version 3), and
/// English, text in nine scripts and binary bytes around text all come back exactly,
/// through `compress` (which verifies) and `decompress`.
#[test]
fn gemma_round_trips_english_multilingual_and_binary_with_text_at_2_28() {
    let Some(_) = gemma("gemma_round_trips_english_multilingual_and_binary_with_text_at_2_28")
    else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut mixed: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    mixed.extend_from_slice(&ENGLISH.as_bytes()[..300]);
    mixed.extend((0..2000u32).map(|i| (i.wrapping_mul(40503) >> 8) as u8));
    let files: [(&str, Vec<u8>); 3] = [
        ("english", ENGLISH.as_bytes()[..400].to_vec()),
        (
            "multilingual",
            include_bytes!("data/multilingual.txt").to_vec(),
        ),
        ("mixed", mixed),
    ];
    for (name, data) in &files {
        let src = dir.path().join(name);
        let blob = dir.path().join(format!("{name}.nc"));
        let back = dir.path().join(format!("{name}.out"));
        std::fs::write(&src, data).unwrap();
        let st = bin()
            .args(["compress", "--model", "gemma3-270m", "-q"])
            .arg(&src)
            .arg("-o")
            .arg(&blob)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let bytes = std::fs::read(&blob).unwrap();
        let parsed = Blob::parse(&bytes).unwrap();
        assert!(!parsed.chunks.is_empty(), "{name}: no text chunk was coded");
        assert_eq!(parsed.header.fingerprint.model, digest_of("gemma3-270m"));
        // The default backend (auto) leaves Gemma, which the portable engine does not
        // run yet, to llama.cpp.
        assert_eq!(
            nacrithfs_engine::model::Backend::of(&parsed.header.fingerprint),
            nacrithfs_engine::model::Backend::Llama,
            "{name}"
        );
        assert_eq!(parsed.header.precision.bits(), 28, "{name}");
        assert_eq!(
            bytes[4], 3,
            "{name}: a precision of 28 is container version 3"
        );
        let st = bin()
            .args(["decompress"])
            .arg(&blob)
            .arg("-o")
            .arg(&back)
            .env_remove("NACRITHFS_MODEL")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(&std::fs::read(&back).unwrap(), data, "{name}");
    }
}

/// A mount with the default backend writes blobs that name the portable engine, and
/// one backing directory holding blobs of both backends reads back cold under a
/// default of either backend (issue 17).
#[test]
fn one_mount_reads_blobs_of_both_backends_whichever_is_its_default() {
    use nacrithfs_engine::model::Backend;
    let smol = smollm2();
    let _g = serial();
    let d = dirs();
    let log = d.root.path().join("daemon.log");
    let a = ENGLISH.as_bytes()[..300].to_vec();
    let b = ENGLISH.as_bytes()[300..620].to_vec();
    let backend = |name: &str| {
        let blob = Blob::parse(&std::fs::read(d.backing.join(name)).unwrap()).unwrap();
        Backend::of(&blob.header.fingerprint)
    };
    let llama: &[&str] = &["--backend", "llama"];
    // The default backend, auto, codes SmolLM2 with the portable engine.
    let portable: &[&str] = &[];
    write_blobs(
        &d.backing,
        &d.mnt,
        (&smol, llama),
        &log,
        &[("llama.txt", &a)],
    );
    write_blobs(
        &d.backing,
        &d.mnt,
        (&smol, portable),
        &log,
        &[("portable.txt", &b)],
    );
    assert_eq!(backend("llama.txt"), Backend::Llama);
    assert_eq!(backend("portable.txt"), Backend::Portable);
    for default in [llama, portable] {
        let m = mount_with(&d.backing, &d.mnt, &smol, &log, default);
        assert_eq!(
            std::fs::read(d.mnt.join("llama.txt")).unwrap(),
            a,
            "{default:?}"
        );
        assert_eq!(
            std::fs::read(d.mnt.join("portable.txt")).unwrap(),
            b,
            "{default:?}"
        );
        m.stop();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for other in ["llama backend", "portable backend"] {
        assert!(
            text.contains(&format!("loaded model smollm2-135m ({other}")),
            "{text}"
        );
    }
}
