//! The portable engine's device kernels (crates/portable/src/device, issue 17) on the
//! real SmolLM2 file: the host's emulation of them gives the CPU engine's logits bit
//! for bit, alone, in a batch, across slides and after a clear; a CUDA GPU, where
//! there is one, gives the same bits; and NVRTC, where it is at hand, compiles them
//! with no fused multiply-add.
//!
//! `NACRITHFS_REQUIRE_GPU=1` (scripts/device-check.sh) makes a missing GPU a failure
//! instead of a skip.

mod common;

use common::portable_model as portable;
use nacrithfs_portable::device::{Device, DeviceSession};
use nacrithfs_portable::{Feed, Session};
use nc06::simd::Isa;
use nc06::Window;

/// A session of either kind, as the tests drive it.
trait Steps {
    fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Feed;
    fn decode(&mut self, feeds: &[Feed]);
    fn logits(&self, i: usize) -> Vec<f32>;
}

impl Steps for Session<'_> {
    fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Feed {
        Session::feed(self, seq, token, logits).unwrap()
    }
    fn decode(&mut self, feeds: &[Feed]) {
        Session::decode(self, feeds).unwrap()
    }
    fn logits(&self, i: usize) -> Vec<f32> {
        Session::logits(self, i).to_vec()
    }
}

impl Steps for DeviceSession {
    fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Feed {
        DeviceSession::feed(self, seq, token, logits).unwrap()
    }
    fn decode(&mut self, feeds: &[Feed]) {
        DeviceSession::decode(self, feeds).unwrap()
    }
    fn logits(&self, i: usize) -> Vec<f32> {
        DeviceSession::logits(self, i).to_vec()
    }
}

/// Every step's logits for `tokens` fed to sequence `seq` of `s`, beside `others`
/// (other sequences' tokens, fed in the same steps while they last).
fn run(s: &mut dyn Steps, seq: u32, tokens: &[u32], others: &[(u32, &[u32])]) -> Vec<Vec<f32>> {
    let bos = portable().config().bos;
    let mut out = Vec::new();
    for step in 0..tokens.len() {
        let tok = |t: &[u32]| if step == 0 { bos } else { t[step - 1] };
        let mut feeds = vec![s.feed(seq, tok(tokens), true)];
        for &(o, t) in others {
            if step < t.len() {
                feeds.push(s.feed(o, tok(t), step % 3 == 0));
            }
        }
        s.decode(&feeds);
        out.push(s.logits(0));
    }
    out
}

fn tokens(text: &str, n: usize) -> Vec<u32> {
    let t = common::model().tokenize(text.as_bytes());
    t[..n.min(t.len())].to_vec()
}

/// The first step at which two runs' logits differ, if any.
fn first_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<usize> {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    (0..a.len().max(b.len())).find(|&i| a.get(i).map(|v| bits(v)) != b.get(i).map(|v| bits(v)))
}

/// The comparison every device must pass: a sequence alone on the CPU engine, against
/// the same sequence on `dev` inside a batch of three that slides (twice for the
/// first), and again after a clear.
fn same_bits_as_the_cpu(dev: impl Fn() -> Device, steps: usize) {
    let a = tokens(common::ENGLISH, steps);
    let b = tokens(common::MULTILINGUAL, steps * 3 / 4);
    let c = tokens(&common::ENGLISH[500..], steps / 2);
    let window = Window { ctx: 40, slide: 12 };
    let m = portable();
    let alone = run(&mut m.session(1, window, Isa::detect()), 0, &a, &[]);
    let mut s = DeviceSession::new(m, dev(), 3, window).expect("the session fits the device");
    eprintln!("device: {}", s.device());
    let batched = run(&mut s, 1, &a, &[(0, &b), (2, &c)]);
    assert_eq!(
        first_difference(&alone, &batched),
        None,
        "a sequence on the device, in a batch, differs from the CPU engine's alone"
    );
    s.clear(1);
    let again = run(&mut s, 1, &a, &[]);
    assert_eq!(
        first_difference(&alone, &again),
        None,
        "a cleared sequence on the device differs"
    );
}

#[test]
fn the_kernels_emulated_on_the_host_give_the_cpu_engines_bits() {
    same_bits_as_the_cpu(Device::host, 60);
}

/// A CUDA GPU, or None (with a note) where there is none, unless the run requires one.
fn gpu() -> Option<Device> {
    match Device::cuda() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("NACRITHFS_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("a GPU is required: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA GPU ({e})");
            None
        }
    }
}

#[test]
fn a_cuda_gpu_gives_the_cpu_engines_bits() {
    if gpu().is_none() {
        return;
    }
    same_bits_as_the_cpu(|| Device::cuda().expect("the GPU opens again"), 90);
}

/// On a GPU, a stream alone and the same stream inside batches of 64 and 512 (the
/// others cut from other text), over a window that slides: the same logits.
#[test]
fn a_cuda_gpu_is_batch_invariant_at_64_and_512_streams() {
    let Some(dev) = gpu() else {
        return;
    };
    let text = tokens(include_str!("../docs/ARCHITECTURE.md"), 4000);
    let a = &text[..60];
    let window = Window { ctx: 48, slide: 16 };
    let m = portable();
    let mut s = DeviceSession::new(m, dev, 1, window).unwrap();
    let alone = run(&mut s, 0, a, &[]);
    drop(s);
    for n in [64u32, 512] {
        let mut s = DeviceSession::new(m, Device::cuda().unwrap(), n, window).unwrap();
        let others: Vec<(u32, &[u32])> = (1..n)
            .map(|k| {
                let at = (k as usize * 7) % (text.len() - 60);
                (k, &text[at..at + 60])
            })
            .collect();
        let batched = run(&mut s, 0, a, &others);
        assert_eq!(
            first_difference(&alone, &batched),
            None,
            "a stream inside a batch of {n} on the GPU differs from itself alone"
        );
    }
}

#[test]
fn nvrtc_compiles_the_kernels_with_no_fused_multiply_add() {
    let ptx = match nacrithfs_portable::device::ptx(90) {
        Ok(p) => p,
        Err(e) => return no_nvrtc(e),
    };
    for k in nacrithfs_portable::device::Kernel::ALL {
        let k = k.name();
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "kernel {k} in the PTX"
        );
    }
    assert!(!ptx.contains("fma."), "a fused multiply-add in the PTX");
    assert!(ptx.contains("mul.rn.f32") && ptx.contains("add.rn.f32"));
}

/// A test that needs NVRTC without it: skipped, unless `NACRITHFS_REQUIRE_NVRTC=1`
/// says it is there. (A GPU machine may run kernels compiled elsewhere, with no NVRTC.)
fn no_nvrtc(e: nacrithfs_portable::device::DeviceError) {
    if std::env::var("NACRITHFS_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("NVRTC is required: {e}")
    }
    eprintln!("skipped: no NVRTC ({e})");
}

#[test]
fn the_kernels_compile_to_a_cubin_kept_under_the_hash_of_their_source() {
    use nacrithfs_portable::device::{install_kernels, kernel_file};
    let dir = tempfile::tempdir().unwrap();
    let path = match install_kernels(dir.path(), 90) {
        Ok(p) => p,
        Err(e) => return no_nvrtc(e),
    };
    assert_eq!(path, kernel_file(dir.path(), 90));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("kernels-") && name.ends_with("-sm_90.cubin"),
        "{name}"
    );
    assert_ne!(kernel_file(dir.path(), 90), kernel_file(dir.path(), 89));
    let image = std::fs::read(&path).unwrap();
    assert!(image.starts_with(b"\x7fELF"), "a cubin is an ELF image");
    // NVRTC is deterministic, so a kept file is what compiling again would give.
    install_kernels(dir.path(), 90).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), image);
    // Only the file: no temporary left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// `nacrithfs` with `NACRITHFS_DEVICE` set to `device`.
fn nacrithfs(device: &str, args: &[&str]) -> std::process::Output {
    // NACRITHFS_TEST_BIN: the binary elsewhere (scripts/device-check.sh carries both).
    let bin = std::env::var_os("NACRITHFS_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_nacrithfs").into());
    let out = std::process::Command::new(bin)
        .env("NACRITHFS_DEVICE", device)
        .args(args)
        .output()
        .expect("spawn nacrithfs");
    assert!(
        out.status.success(),
        "nacrithfs {args:?} on {device}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The whole engine on the device kernels (emulated here; scripts/device-check.sh
/// runs the same on a GPU with `NACRITHFS_DEVICE=cuda`): `compress` gives the CPU
/// engine's blob byte for byte, at 1 and 4 streams, and each decodes the other's.
fn the_engine_on(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, common::ENGLISH).unwrap();
    let t = text.to_str().unwrap();
    let blob = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (cpu, dev) = (blob("cpu.nc"), blob("dev.nc"));
    for streams in ["1", "4"] {
        let args = |out: &str| {
            vec![
                "compress",
                t,
                "-o",
                out,
                "--backend",
                "portable",
                "--streams",
                streams,
                "--chunk-size",
                "400",
                "--force",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        };
        let run = |device: &str, out: &str| {
            let a = args(out);
            nacrithfs(device, &a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        };
        run("cpu", &cpu);
        run(device, &dev);
        assert!(
            std::fs::read(&cpu).unwrap() == std::fs::read(&dev).unwrap(),
            "{device} at {streams} streams: the blob differs from the CPU engine's"
        );
    }
    for (who, b) in [("cpu", &dev), (device, &cpu)] {
        let back = blob("back.txt");
        nacrithfs(who, &["decompress", b, "-o", &back, "--force"]);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&text).unwrap());
        std::fs::remove_file(&back).unwrap();
    }
}

#[test]
fn the_engine_on_the_emulated_kernels_makes_the_cpu_engines_blobs() {
    the_engine_on("host");
}

#[test]
fn the_engine_on_a_cuda_gpu_makes_the_cpu_engines_blobs() {
    if gpu().is_none() {
        return;
    }
    the_engine_on("cuda");
}

#[test]
fn the_probe_the_engine_runs_before_using_a_device_passes_on_the_emulator() {
    let ok = nacrithfs_portable::device::agrees_with_cpu(portable(), Device::host());
    assert!(ok.expect("the probe runs"), "the emulated kernels disagree");
}

/// The probe is what keeps a device that breaks the spec from coding blobs: the same
/// kernels built with fused multiply-adds (one rounding where the spec has two) give
/// other logits, and it says so.
#[test]
fn the_probe_refuses_kernels_built_with_fused_multiply_adds() {
    let Some(dev) = Device::host_fused() else {
        eprintln!("skipped: this CPU has no fused multiply-add");
        return;
    };
    let ok = nacrithfs_portable::device::agrees_with_cpu(portable(), dev);
    assert!(
        !ok.expect("the probe runs"),
        "fused multiply-adds went unnoticed"
    );
}

/// A session larger than memory is an error, never an abort.
#[test]
fn a_session_too_large_for_the_device_is_an_error() {
    let huge = Window {
        ctx: 1 << 20,
        slide: 1 << 10,
    };
    let s = DeviceSession::new(portable(), Device::host(), 1 << 16, huge);
    assert!(s.is_err(), "a cache of petabytes was allocated");
}
