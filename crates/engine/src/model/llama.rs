//! The model: loading, tokenizer, and multi-sequence decoding sessions, through one of
//! two backends ([`Backend`]).
//!
//! llama.cpp: determinism rules (measured with llama-cpp-2 0.1.160 on CPU): flash
//! attention off, a non-unified KV cache (each sequence has its own cells), and exactly
//! one token per sequence per decode call. Under these rules a sequence's logits do not
//! depend on which other sequences share the call, so a chunk encoded in a batch of 32
//! decodes alone to the same bytes; but they depend on the build.
//!
//! The portable engine (`nacrithfs-portable`, docs/ENGINE.md) computes the same bits on
//! every machine, and tokenizes with its own tokenizer (the same tokens as llama.cpp's):
//! with it llama.cpp is not used at all.

use super::{Backend, BackendChoice};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use nc06::{Fingerprint, Window};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Version of everything after the logits (softmax, CDF, coder). Part of the backend
/// descriptor, so changing that code changes the fingerprint.
const PREDICTOR_VERSION: u32 = 2;

/// What the backend digest of a portable-engine fingerprint hashes: the spec of its
/// arithmetic and the predictor version, nothing of the build or the machine.
pub(crate) fn portable_descriptor() -> String {
    format!(
        "nacrithfs-portable spec {}; predictor {PREDICTOR_VERSION}",
        nacrithfs_portable::SPEC_VERSION
    )
}

/// What can go wrong with the model or llama.cpp. llama.cpp's own errors are kept as
/// sources.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// There is no model file at this path.
    #[error("no model at {}; run scripts/fetch-model.sh to fetch the default model, or pass --model PATH / set NACRITHFS_MODEL", .0.display())]
    NotFound(PathBuf),
    /// A model named by its short name has not been fetched.
    #[error("model {name} is not fetched (no {}); fetch it with scripts/fetch-model.sh {name}", .path.display())]
    NotFetched {
        /// Its short name.
        name: &'static str,
        /// Where it would be.
        path: PathBuf,
    },
    /// The model file cannot be read (to fingerprint it).
    #[error("cannot read model {}", .path.display())]
    Read {
        /// The model file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// llama.cpp does not take the file as a model.
    #[error("llama.cpp could not load {} as a GGUF model", .path.display())]
    Load {
        /// The model file.
        path: PathBuf,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    /// llama.cpp's backend did not start.
    #[error("llama.cpp backend failed to start")]
    Backend(#[source] Arc<llama_cpp_2::LlamaCppError>),
    /// The portable engine cannot run the model file.
    #[error("portable engine: {source}")]
    Portable {
        /// The model file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<nacrithfs_portable::LoadError>,
    },
    /// The portable engine's threads could not be started.
    #[error("cannot start the portable engine's threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    /// A step of the portable engine was refused.
    #[error("portable engine step: {0}")]
    Step(#[source] nacrithfs_portable::StepError),
    /// The portable engine's GPU failed (or `--device cuda` found none).
    #[error("portable engine on the GPU: {0}")]
    Device(#[source] nacrithfs_portable::device::DeviceError),
    /// A step of the portable engine on the GPU failed.
    #[error("portable engine step on the GPU: {0}")]
    DeviceStep(#[source] nacrithfs_portable::device::DeviceStepError),
    /// The GPU's logits are not the CPU engine's bits (a driver or compiler that breaks
    /// the spec): what it coded would not decode elsewhere, so it is not used.
    #[error("the GPU ({0}) does not compute the portable engine's logits bit for bit; its blobs would not decode on other machines: run with --device cpu")]
    DeviceDisagrees(String),
    /// No context of this size could be made (usually: not enough memory).
    #[error("llama.cpp could not create a context for {n_seq} sequences of {n_ctx} tokens")]
    Context {
        /// Sequences asked for.
        n_seq: u32,
        /// Positions per sequence.
        n_ctx: u32,
        /// What llama.cpp said.
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    /// A token could not be added to the batch.
    #[error("llama.cpp batch is full")]
    Batch(#[source] llama_cpp_2::llama_batch::BatchAddError),
    /// A decode call failed.
    #[error("llama.cpp decode failed")]
    Decode(#[source] llama_cpp_2::DecodeError),
    /// A KV cache operation (clear, slide) failed.
    #[error("KV cache operation failed")]
    Kv(#[source] llama_cpp_2::context::kv_cache::KvCacheConversionError),
    /// A feed for a sequence the context does not have.
    #[error("sequence {seq} of a context with {n_seq}")]
    NoSequence {
        /// The sequence asked for.
        seq: u32,
        /// Sequences in the context.
        n_seq: u32,
    },
}

/// How the model is loaded; nothing here changes what is predicted on a CPU.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Layers to offload to a GPU (ignored by CPU builds).
    pub gpu_layers: u32,
    /// Threads for llama.cpp; 0 means all available cores.
    pub threads: usize,
    /// Which engine computes the logits (recorded in every blob's fingerprint).
    pub backend: BackendChoice,
    /// Where the portable engine runs (never changes a bit).
    pub device: DeviceChoice,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            gpu_layers: if cfg!(feature = "cuda") { 999 } else { 0 },
            threads: 0,
            backend: BackendChoice::default(),
            device: DeviceChoice::from_env(),
        }
    }
}

/// Where the portable engine runs (`--device`, the mount's `device=`; default
/// `$NACRITHFS_DEVICE`, else auto). Every choice gives the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first CUDA GPU whose driver and NVRTC load and whose logits pass the probe
    /// against the CPU engine; else the CPU.
    #[default]
    Auto,
    /// The CPU engine.
    Cpu,
    /// A CUDA GPU, or an error.
    Cuda,
    /// The device kernels emulated on the host: slow, for tests.
    Host,
}

impl DeviceChoice {
    /// The choice called `name` (`auto`, `cpu`, `cuda`, `host`).
    pub fn parse(name: &str) -> Option<DeviceChoice> {
        Some(match name {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            "host" => DeviceChoice::Host,
            _ => return None,
        })
    }

    /// `$NACRITHFS_DEVICE`, else auto (an unknown value is auto too, with a warning).
    pub fn from_env() -> DeviceChoice {
        match std::env::var(DEVICE_ENV) {
            Ok(v) => DeviceChoice::parse(&v).unwrap_or_else(|| {
                log::warn!("{DEVICE_ENV}={v:?} is not auto, cpu, cuda or host: taking auto");
                DeviceChoice::Auto
            }),
            Err(_) => DeviceChoice::Auto,
        }
    }
}

fn backend() -> Result<&'static LlamaBackend, ModelError> {
    static BACKEND: OnceLock<Result<LlamaBackend, Arc<llama_cpp_2::LlamaCppError>>> =
        OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(Arc::new)?;
            if std::env::var_os("NACRITHFS_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(|e| ModelError::Backend(e.clone()))
}

/// A loaded GGUF model, shared by every session and worker.
pub struct Model {
    /// The weights, and the engine that runs them.
    weights: Weights,
    path: PathBuf,
    fingerprint: Fingerprint,
    descriptor: String,
    bos: u32,
    n_vocab: usize,
    threads: i32,
    auto_threads: bool,
    /// Layers run on a GPU (so a decode call is fast and the CPU side matters).
    offloaded: bool,
    /// Where the portable engine's sessions run when not on the CPU engine, and what
    /// that device is.
    device: Option<(Place, String)>,
}

/// A model's weights in the engine that computes its logits (and tokenizes).
enum Weights {
    /// llama.cpp.
    Llama(LlamaModel),
    /// The portable engine; llama.cpp is not used.
    Portable(Box<nacrithfs_portable::Model>),
}

/// Environment variable giving [`DeviceChoice`]'s default.
pub const DEVICE_ENV: &str = "NACRITHFS_DEVICE";

/// Where the portable engine's device sessions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Cuda,
    Host,
}

impl Place {
    fn open(self) -> Result<nacrithfs_portable::device::Device, ModelError> {
        match self {
            Place::Cuda => nacrithfs_portable::device::Device::cuda().map_err(ModelError::Device),
            Place::Host => Ok(nacrithfs_portable::device::Device::host()),
        }
    }
}

/// The device that `choice` puts the portable engine on, if any. A GPU is opened here
/// once and must give the CPU engine's logits bit for bit on a short probe
/// (`agrees_with_cpu`) before anything is coded on it; then each session opens its own.
fn portable_device(
    p: &nacrithfs_portable::Model,
    choice: DeviceChoice,
) -> Result<Option<(Place, String)>, ModelError> {
    let gpu = || -> Result<Option<(Place, String)>, ModelError> {
        let dev = Place::Cuda.open()?;
        let name = dev.describe();
        match nacrithfs_portable::device::agrees_with_cpu(p, dev) {
            Ok(true) => Ok(Some((Place::Cuda, name))),
            Ok(false) => Err(ModelError::DeviceDisagrees(name)),
            Err(e) => Err(ModelError::DeviceStep(e)),
        }
    };
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Cuda => gpu(),
        DeviceChoice::Host => {
            let dev = Place::Host.open()?;
            Ok(Some((Place::Host, dev.describe())))
        }
        DeviceChoice::Auto => match gpu() {
            Ok(d) => Ok(d),
            // No CUDA driver: no GPU, the usual case. Anything else (no NVRTC, a GPU
            // that fails to start or fails the probe) is worth a warning: there is a
            // GPU and it is not used.
            Err(ModelError::Device(nacrithfs_portable::device::DeviceError::NoDriver(_))) => {
                log::debug!("portable engine on the CPU: no CUDA driver");
                Ok(None)
            }
            Err(e) => {
                log::warn!("portable engine on the CPU, not the GPU: {e}");
                Ok(None)
            }
        },
    }
}

impl Model {
    /// Loads the GGUF file at `path` and fingerprints it (its SHA-256 and this build).
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Model, ModelError> {
        let digest = sha256_file(path)?;
        let (weights, descriptor, offloaded, device) = match portable_for(path, opts.backend)? {
            Some(p) => {
                let device = portable_device(&p, opts.device)?;
                let gpu = matches!(device, Some((Place::Cuda, _)));
                (
                    Weights::Portable(Box::new(p)),
                    portable_descriptor(),
                    gpu,
                    device,
                )
            }
            None => {
                let backend = backend()?;
                let params = LlamaModelParams::default().with_n_gpu_layers(opts.gpu_layers);
                let m = LlamaModel::load_from_file(backend, path, &params).map_err(|source| {
                    ModelError::Load {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                let (d, o) = build_descriptor(backend, opts);
                (Weights::Llama(m), d, o, None)
            }
        };
        let (n_vocab, bos) = match &weights {
            Weights::Portable(p) => (p.config().vocab, p.config().bos),
            Weights::Llama(m) => {
                let vocab = m.vocab();
                (
                    vocab.n_tokens().max(0) as usize,
                    vocab.bos().0.max(0) as u32,
                )
            }
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        Ok(Model {
            fingerprint: Fingerprint::new(&digest, &descriptor),
            weights,
            path: path.to_path_buf(),
            descriptor,
            bos,
            n_vocab,
            threads: threads.min(256) as i32,
            auto_threads: opts.threads == 0,
            offloaded,
            device,
        })
    }

    /// What a blob coded by this model and build records.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Human-readable description of the inference build (what the backend digest hashes).
    pub fn descriptor(&self) -> &str {
        &self.descriptor
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in the vocabulary (the size of every CDF).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Which engine computes the logits.
    pub fn backend(&self) -> Backend {
        match self.weights {
            Weights::Portable(_) => Backend::Portable,
            Weights::Llama(_) => Backend::Llama,
        }
    }

    /// Whether the model runs on a GPU.
    pub fn offloaded(&self) -> bool {
        self.offloaded
    }

    /// The device the portable engine runs on, when it is not the CPU engine (a GPU,
    /// or the host emulating one).
    pub fn device(&self) -> Option<&str> {
        self.device.as_ref().map(|(_, d)| d.as_str())
    }

    /// The token every sequence starts from; the first real token is predicted after it.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// Tokenizes plain text (special-token syntax is treated as text).
    pub fn tokenize(&self, text: &[u8]) -> Vec<u32> {
        let m = match &self.weights {
            Weights::Portable(p) => return p.vocab().tokenize(text),
            Weights::Llama(m) => m,
        };
        m.vocab()
            .tokenize(&llama_safe(text), false, false)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// Appends the bytes of `tokens` to `out`.
    pub fn detokenize_into(&self, tokens: &[u32], out: &mut Vec<u8>) {
        let m = match &self.weights {
            Weights::Portable(p) => return p.vocab().detokenize_into(tokens, out),
            Weights::Llama(m) => m,
        };
        let vocab = m.vocab();
        for &t in tokens {
            if (t as usize) < self.n_vocab {
                vocab.token_to_piece_into(LlamaToken(t as i32), out, false, None);
            }
        }
    }

    /// Tokens of `text` if they give back exactly `text`, else `None` (such text must
    /// take the binary path: the tokenizer would change it).
    pub fn tokenize_exact(&self, text: &[u8]) -> Option<Vec<u32>> {
        let tokens = self.tokenize(text);
        let mut back = Vec::with_capacity(text.len());
        self.detokenize_into(&tokens, &mut back);
        (back == text).then_some(tokens)
    }

    /// Threads a context uses unless told otherwise (`--threads`, else every core).
    pub fn threads(&self) -> usize {
        self.threads as usize
    }

    /// Whether the thread count was left to the machine (`--threads 0`), so that a
    /// worker may take fewer when other model processes are decoding.
    pub fn auto_threads(&self) -> bool {
        self.auto_threads
    }

    /// A decoding context for up to `n_seq` sequences of `window.ctx` positions each.
    pub fn session(&self, n_seq: u32, window: Window) -> Result<Session<'_>, ModelError> {
        self.session_with_threads(n_seq, window, self.threads())
    }

    /// [`Model::session`] with `threads` llama.cpp threads (which do not change the
    /// logits: only how the work is split).
    pub fn session_with_threads(
        &self,
        n_seq: u32,
        window: Window,
        threads: usize,
    ) -> Result<Session<'_>, ModelError> {
        let threads = threads.clamp(1, 256) as i32;
        let n_seq = n_seq.max(1);
        let llama = match (&self.weights, &self.device) {
            (Weights::Portable(p), Some((place, _))) => {
                let dev = place.open()?;
                let s = nacrithfs_portable::device::DeviceSession::new(p, dev, n_seq, window)
                    .map_err(ModelError::Device)?;
                return Ok(Session {
                    inner: Inner::Device { s: Box::new(s) },
                    window,
                    n_seq,
                    threads: threads as usize,
                });
            }
            (Weights::Portable(p), None) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads as usize)
                    .thread_name(|i| format!("portable-{i}"))
                    .build()
                    .map_err(ModelError::Threads)?;
                return Ok(Session {
                    inner: Inner::Portable {
                        s: p.session(n_seq, window, nc06::simd::isa()),
                        pool,
                    },
                    window,
                    n_seq,
                    threads: threads as usize,
                });
            }
            (Weights::Llama(m), _) => m,
        };
        let n_ctx = n_seq.saturating_mul(window.ctx);
        let err = |source| ModelError::Context {
            n_seq,
            n_ctx: window.ctx,
            source,
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_seq_max(n_seq)
            .with_n_batch(n_seq.max(64))
            .with_n_ubatch(n_seq.max(64))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_kv_unified(false)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
            .with_no_perf(true);
        // llama.cpp mutates the model while creating a context: never do it concurrently.
        static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let ctx = {
            let _guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
            llama.new_context(backend()?, params).map_err(err)?
        };
        Ok(Session {
            inner: Inner::Llama {
                ctx,
                batch: LlamaBatch::new(n_seq as usize, 1),
                next_pos: vec![0; n_seq as usize],
            },
            window,
            n_seq,
            threads: threads as usize,
        })
    }
}

/// Frees the calling thread's OpenMP thread team: llama.cpp's CPU threads, which the
/// next decode call starts again (in about 0.1 ms). Model workers call it when they go
/// idle. libgomp keeps a team for every thread that ever ran llama.cpp, and once its
/// teams hold more threads than there are cores it stops spinning at llama.cpp's
/// barriers and sleeps in futex at every one of them: on 2 cores the idle team of one
/// model made the other model's decode 2.7 times slower. Must not be called from
/// inside llama.cpp (it is not: workers call it between decode calls).
pub fn release_threads() {
    extern "C" {
        /// OpenMP 5.0 (libgomp since GCC 9): frees the runtime's resources for the
        /// calling thread; `kind` 1 is `omp_pause_soft`.
        fn omp_pause_resource_all(kind: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: a plain C call into the OpenMP runtime that llama.cpp is linked with, with
    // a valid kind (omp_pause_soft); the calling thread is not in a parallel region, so
    // libgomp only frees this thread's idle team (it returns non-zero otherwise).
    let r = unsafe { omp_pause_resource_all(1) };
    if r != 0 {
        log::debug!("omp_pause_resource_all: {r}");
    }
}

/// What the backend digest of the fingerprint hashes: the llama.cpp build, the
/// predictor version, GPU use and the compiled SIMD features; and whether layers run
/// on a GPU.
fn build_descriptor(backend: &LlamaBackend, opts: &ModelOptions) -> (String, bool) {
    let offloaded = backend.supports_gpu_offload() && opts.gpu_layers > 0;
    let descriptor = format!(
        "llama-cpp-sys-2 0.1.160; predictor {PREDICTOR_VERSION}; gpu {offloaded}; {}",
        system_info()
    );
    (descriptor, offloaded)
}

/// `text` as llama.cpp 0.1.160 can take it. Its tokenizer throws a C++ exception, which
/// aborts the process, on a 4-byte sequence whose value is past U+10FFFF; the lead byte
/// of each such sequence is replaced by 0xFF, which it decodes to U+FFFD (so the
/// tokens do not give `text` back, and it takes the binary path).
fn llama_safe(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bad = |w: &[u8]| {
        (0xf4..=0xf7).contains(&w[0])
            && w[1..].iter().all(|&b| b & 0xc0 == 0x80)
            && (u32::from(w[0] & 7) << 18 | u32::from(w[1] & 0x3f) << 12) > 0x10_ffff
    };
    if !text.windows(4).any(bad) {
        return text.into();
    }
    let mut v = text.to_vec();
    for i in 0..v.len().saturating_sub(3) {
        if bad(&v[i..i + 4]) {
            v[i] = 0xff;
        }
    }
    v.into()
}

/// The fingerprint blobs coded with the model at `path` would record on this build
/// (`nacrithfs --version`, `info`). llama.cpp's weights are not loaded; under `auto`
/// the portable engine loads the file, since only that tells whether it runs it.
pub fn fingerprint_of(path: &Path, opts: &ModelOptions) -> Result<Fingerprint, ModelError> {
    let digest = sha256_file(path)?;
    let descriptor = match portable_for(path, opts.backend)? {
        Some(_) => portable_descriptor(),
        None => build_descriptor(backend()?, opts).0,
    };
    Ok(Fingerprint::new(&digest, &descriptor))
}

/// The portable engine's model of the file at `path` when `choice` has it compute the
/// logits: always for `portable`, never for `llama`, and for `auto` when the engine
/// runs the file's architecture, tokenizer and weight types (else llama.cpp does, and
/// a log line says why). A damaged file is an error under every choice.
fn portable_for(
    path: &Path,
    choice: BackendChoice,
) -> Result<Option<nacrithfs_portable::Model>, ModelError> {
    let err = |source| ModelError::Portable {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    match choice {
        BackendChoice::Only(Backend::Llama) => Ok(None),
        BackendChoice::Only(Backend::Portable) => {
            nacrithfs_portable::Model::load(path).map(Some).map_err(err)
        }
        BackendChoice::Auto => match nacrithfs_portable::Model::load(path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.unsupported() => {
                log::info!("model {}: llama.cpp codes it ({e})", path.display());
                Ok(None)
            }
            Err(e) => Err(err(e)),
        },
    }
}

fn system_info() -> String {
    // SAFETY: llama_print_system_info returns a pointer to a static, NUL-terminated buffer.
    let p = unsafe { llama_cpp_sys_2::llama_print_system_info() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: p is non-null and points to llama.cpp's static NUL-terminated buffer.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
}

fn sha256_file(path: &Path) -> Result<[u8; 32], ModelError> {
    let read_err = |source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound(path.to_path_buf())
        } else {
            read_err(e)
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// One decoding context holding up to `n_seq` independent sequences.
pub struct Session<'m> {
    inner: Inner<'m>,
    window: Window,
    n_seq: u32,
    threads: usize,
}

enum Inner<'m> {
    Llama {
        ctx: LlamaContext<'m>,
        batch: LlamaBatch<'static>,
        /// The position of each sequence's next token.
        next_pos: Vec<u32>,
    },
    Portable {
        s: nacrithfs_portable::Session<'m>,
        /// The threads its matrix products and attention are split over.
        pool: rayon::ThreadPool,
    },
    /// The portable engine on a GPU: the same feeds and bits.
    Device {
        /// Boxed: the session holds the addresses of every weight on the device.
        s: Box<nacrithfs_portable::device::DeviceSession>,
    },
}

/// One token to feed: sequence `seq` at position `pos`. Made only by
/// [`Session::feed`], so every lockstep loop advances and slides positions alike.
#[derive(Clone, Copy, Debug)]
pub struct Feed(FeedOf);

#[derive(Clone, Copy, Debug)]
enum FeedOf {
    Llama {
        seq: u32,
        token: u32,
        pos: u32,
        /// Whether this row's logits are wanted (rows without skip the output layer).
        logits: bool,
    },
    Portable(nacrithfs_portable::Feed),
}

impl Feed {
    /// The sequence this token goes to.
    pub fn seq(&self) -> u32 {
        match self.0 {
            FeedOf::Llama { seq, .. } => seq,
            FeedOf::Portable(f) => f.seq(),
        }
    }

    /// Its position in the sequence.
    pub fn pos(&self) -> u32 {
        match self.0 {
            FeedOf::Llama { pos, .. } => pos,
            FeedOf::Portable(f) => f.pos(),
        }
    }
}

impl<'m> Session<'m> {
    /// Sequences the context holds.
    pub fn n_seq(&self) -> u32 {
        self.n_seq
    }

    /// The window of every sequence.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Threads of the context.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The feed that gives `token` to sequence `seq` at its next position, sliding the
    /// sequence's window first when it is full (see `slide`). Every lockstep
    /// loop builds its steps from this, so all of them slide exactly alike; the feeds of
    /// one step go to one [`Session::decode`] call.
    pub fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Result<Feed, ModelError> {
        let n_seq = self.n_seq;
        let no_seq = || ModelError::NoSequence { seq, n_seq };
        let window = self.window;
        match &mut self.inner {
            Inner::Portable { s, .. } => s
                .feed(seq, token, logits)
                .map(|f| Feed(FeedOf::Portable(f)))
                .map_err(|_| no_seq()),
            Inner::Device { s } => s
                .feed(seq, token, logits)
                .map(|f| Feed(FeedOf::Portable(f)))
                .map_err(|e| match e {
                    nacrithfs_portable::device::DeviceStepError::Step(_) => no_seq(),
                    e => ModelError::DeviceStep(e),
                }),
            Inner::Llama { ctx, next_pos, .. } => {
                let i = seq as usize;
                let Some(&pos) = next_pos.get(i) else {
                    return Err(no_seq());
                };
                let pos = if pos == window.ctx {
                    slide(ctx, window, seq, pos)?
                } else {
                    pos
                };
                next_pos[i] = pos + 1;
                Ok(Feed(FeedOf::Llama {
                    seq,
                    token,
                    pos,
                    logits,
                }))
            }
        }
    }

    /// Runs one decode call with one token for each listed sequence (each at most once).
    /// Afterwards `logits(i)` holds the prediction after `feeds[i]`.
    pub fn decode(&mut self, feeds: &[Feed]) -> Result<(), ModelError> {
        let portable = || -> Vec<nacrithfs_portable::Feed> {
            feeds
                .iter()
                .filter_map(|f| match f.0 {
                    FeedOf::Portable(f) => Some(f),
                    FeedOf::Llama { .. } => None,
                })
                .collect()
        };
        match &mut self.inner {
            Inner::Portable { s, pool } => {
                let fs = portable();
                pool.install(|| s.decode(&fs)).map_err(ModelError::Step)
            }
            Inner::Device { s } => s.decode(&portable()).map_err(ModelError::DeviceStep),
            Inner::Llama { ctx, batch, .. } => {
                batch.clear();
                for f in feeds {
                    let FeedOf::Llama {
                        seq,
                        token,
                        pos,
                        logits,
                    } = f.0
                    else {
                        continue;
                    };
                    debug_assert!(seq < self.n_seq && pos < self.window.ctx);
                    batch
                        .add(LlamaToken(token as i32), pos as i32, &[seq as i32], logits)
                        .map_err(ModelError::Batch)?;
                }
                ctx.decode(batch).map_err(ModelError::Decode)
            }
        }
    }

    /// Logits after the `i`-th feed of the last [`Session::decode`] (which must have
    /// asked for them).
    pub fn logits(&self, i: usize) -> &[f32] {
        match &self.inner {
            Inner::Portable { s, .. } => s.logits(i),
            Inner::Device { s } => s.logits(i),
            Inner::Llama { ctx, .. } => ctx.get_logits_ith(i as i32),
        }
    }

    /// Forgets everything of sequence `seq`, so a new stream can start in its cells.
    pub fn clear(&mut self, seq: u32) -> Result<(), ModelError> {
        match &mut self.inner {
            Inner::Portable { s, .. } => {
                s.clear(seq);
                Ok(())
            }
            Inner::Device { s } => {
                s.clear(seq);
                Ok(())
            }
            Inner::Llama { ctx, next_pos, .. } => {
                if let Some(p) = next_pos.get_mut(seq as usize) {
                    *p = 0;
                }
                ctx.clear_kv_cache_seq(Some(seq), None, None)
                    .map(|_| ())
                    .map_err(ModelError::Kv)
            }
        }
    }
}

/// Makes room in a full llama.cpp sequence: drops positions `1..1+slide` (keeping the
/// sink at 0) and shifts the rest down by `slide`. Returns the next free position.
fn slide(
    ctx: &mut LlamaContext<'_>,
    window: Window,
    seq: u32,
    next_pos: u32,
) -> Result<u32, ModelError> {
    let s = window.slide;
    ctx.kv_cache_seq_rm(seq as i32, Some(1), Some(1 + s))
        .map_err(ModelError::Kv)?;
    ctx.kv_cache_seq_add(seq as i32, Some(1 + s), Some(next_pos), -(s as i32))
        .map_err(ModelError::Kv)?;
    Ok(next_pos - s)
}
