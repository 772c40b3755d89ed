//! A loaded model file: its fingerprint, tokenizer, and the sessions that decode with
//! it, through one of two backends ([`Backend`]). The portable engine
//! (`nacrithfs-portable`, docs/ENGINE.md) computes the same bits on every machine and
//! tokenizes by itself (the same tokens as llama.cpp's): with it llama.cpp is not used
//! at all.

use super::llama;
use super::portable::{portable_descriptor, portable_device, portable_for, Place};
use super::session::{Inner, Session};
use super::{Backend, ModelError, ModelOptions};
use nc06::{Fingerprint, Window};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

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
    Llama(llama::Weights),
    /// The portable engine; llama.cpp is not used.
    Portable(Box<nacrithfs_portable::Model>),
}

impl Model {
    /// Loads the GGUF file at `path` and fingerprints it (its SHA-256 and this build).
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Model, ModelError> {
        let digest = sha256_file(path)?;
        let (weights, descriptor, offloaded, device) = match portable_for(path, opts.backend)? {
            Ok(p) => {
                let device = portable_device(&p, opts.device)?;
                let gpu = matches!(device, Some((Place::Cuda, _)));
                (
                    Weights::Portable(Box::new(p)),
                    portable_descriptor(),
                    gpu,
                    device,
                )
            }
            Err(why) => {
                let (m, d, o) = llama::Weights::load(path, opts).map_err(|e| needs(e, why))?;
                (Weights::Llama(m), d, o, None)
            }
        };
        let (n_vocab, bos) = match &weights {
            Weights::Portable(p) => (p.config().vocab, p.config().bos),
            Weights::Llama(m) => (m.n_vocab(), m.bos()),
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
        match &self.weights {
            Weights::Portable(p) => p.vocab().tokenize(text),
            Weights::Llama(m) => m.tokenize(text),
        }
    }

    /// Appends the bytes of `tokens` to `out`.
    pub fn detokenize_into(&self, tokens: &[u32], out: &mut Vec<u8>) {
        match &self.weights {
            Weights::Portable(p) => p.vocab().detokenize_into(tokens, out),
            Weights::Llama(m) => m.detokenize_into(tokens, out),
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
        let threads = threads.clamp(1, 256);
        let n_seq = n_seq.max(1);
        let inner = match (&self.weights, &self.device) {
            (Weights::Portable(p), Some((place, _))) => {
                let dev = place.open()?;
                let s = nacrithfs_portable::device::DeviceSession::new(p, dev, n_seq, window)
                    .map_err(ModelError::Device)?;
                Inner::Device { s: Box::new(s) }
            }
            (Weights::Portable(p), None) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("portable-{i}"))
                    .build()
                    .map_err(ModelError::Threads)?;
                Inner::Portable {
                    s: p.session(n_seq, window, nc06::simd::isa()),
                    pool,
                }
            }
            (Weights::Llama(m), _) => Inner::Llama(m.session(n_seq, window, threads as i32)?),
        };
        Ok(Session::new(inner, window, n_seq, threads))
    }
}

/// The fingerprint blobs coded with the model at `path` would record on this build
/// (`nacrithfs --version`, `info`). llama.cpp's weights are not loaded; under `auto`
/// the portable engine loads the file, since only that tells whether it runs it.
pub fn fingerprint_of(path: &Path, opts: &ModelOptions) -> Result<Fingerprint, ModelError> {
    let digest = sha256_file(path)?;
    let descriptor = match portable_for(path, opts.backend)? {
        Ok(_) => portable_descriptor(),
        Err(why) => llama::descriptor(path, opts).map_err(|e| needs(e, why))?,
    };
    Ok(Fingerprint::new(&digest, &descriptor))
}

/// `e`, saying `why` llama.cpp was wanted when it is that this build has none.
fn needs(e: ModelError, why: String) -> ModelError {
    match e {
        ModelError::NoLlama { path, .. } => ModelError::NoLlama { path, why },
        e => e,
    }
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
