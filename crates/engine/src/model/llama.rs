//! llama.cpp as a backend (the `llama` feature, on by default): its model, tokenizer
//! and multi-sequence contexts.
//!
//! Determinism rules (measured with llama-cpp-2 0.1.160 on CPU): flash attention off, a
//! non-unified KV cache (each sequence has its own cells), and exactly one token per
//! sequence per decode call. Under these rules a sequence's logits do not depend on
//! which other sequences share the call, so a chunk encoded in a batch of 32 decodes
//! alone to the same bytes; but they depend on the build, which the fingerprint names.

use super::{ModelError, ModelOptions, PREDICTOR_VERSION};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use nc06::Window;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A model file loaded by llama.cpp.
pub(super) struct Weights {
    model: LlamaModel,
    n_vocab: usize,
}

impl Weights {
    /// Loads `path`, with the descriptor its fingerprint hashes and whether its layers
    /// run on a GPU.
    pub(super) fn load(
        path: &Path,
        opts: &ModelOptions,
    ) -> Result<(Weights, String, bool), ModelError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(opts.gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|source| {
            ModelError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let n_vocab = model.vocab().n_tokens().max(0) as usize;
        let (descriptor, offloaded) = build_descriptor(backend, opts);
        Ok((Weights { model, n_vocab }, descriptor, offloaded))
    }

    /// Tokens in the vocabulary.
    pub(super) fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The token every sequence starts from.
    pub(super) fn bos(&self) -> u32 {
        self.model.vocab().bos().0.max(0) as u32
    }

    /// llama.cpp's tokens of plain text (special-token syntax is treated as text).
    pub(super) fn tokenize(&self, text: &[u8]) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(&llama_safe(text), false, false)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// Appends the bytes of `tokens` to `out` (tokens outside the vocabulary add none).
    pub(super) fn detokenize_into(&self, tokens: &[u32], out: &mut Vec<u8>) {
        let vocab = self.model.vocab();
        for &t in tokens {
            if (t as usize) < self.n_vocab {
                vocab.token_to_piece_into(LlamaToken(t as i32), out, false, None);
            }
        }
    }

    /// A context for `n_seq` sequences of `window.ctx` positions, under the
    /// determinism rules.
    pub(super) fn session(
        &self,
        n_seq: u32,
        window: Window,
        threads: i32,
    ) -> Result<Session<'_>, ModelError> {
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
            self.model.new_context(backend()?, params).map_err(err)?
        };
        Ok(Session {
            ctx,
            batch: LlamaBatch::new(n_seq as usize, 1),
            next_pos: vec![0; n_seq as usize],
            window,
        })
    }
}

/// The descriptor a fingerprint of this build hashes, without loading a model.
pub(super) fn descriptor(_path: &Path, opts: &ModelOptions) -> Result<String, ModelError> {
    Ok(build_descriptor(backend()?, opts).0)
}

/// A llama.cpp context of several sequences.
pub(super) struct Session<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// The position of each sequence's next token.
    next_pos: Vec<u32>,
    window: Window,
}

/// One token for one sequence at one position.
#[derive(Clone, Copy, Debug)]
pub(super) struct Feed {
    pub(super) seq: u32,
    token: u32,
    pub(super) pos: u32,
    /// Whether this row's logits are wanted (rows without skip the output layer).
    logits: bool,
}

impl Session<'_> {
    /// The feed of `token` to `seq` at its next position, sliding its window first
    /// when it is full; `None` for a sequence the context does not have.
    pub(super) fn feed(
        &mut self,
        seq: u32,
        token: u32,
        logits: bool,
    ) -> Result<Option<Feed>, ModelError> {
        let i = seq as usize;
        let Some(&pos) = self.next_pos.get(i) else {
            return Ok(None);
        };
        let pos = if pos == self.window.ctx {
            slide(&mut self.ctx, self.window, seq, pos)?
        } else {
            pos
        };
        self.next_pos[i] = pos + 1;
        Ok(Some(Feed {
            seq,
            token,
            pos,
            logits,
        }))
    }

    /// One decode call with these feeds.
    pub(super) fn decode<'f>(
        &mut self,
        feeds: impl Iterator<Item = &'f Feed>,
    ) -> Result<(), ModelError> {
        self.batch.clear();
        for f in feeds {
            debug_assert!((f.seq as usize) < self.next_pos.len() && f.pos < self.window.ctx);
            self.batch
                .add(
                    LlamaToken(f.token as i32),
                    f.pos as i32,
                    &[f.seq as i32],
                    f.logits,
                )
                .map_err(ModelError::Batch)?;
        }
        self.ctx.decode(&mut self.batch).map_err(ModelError::Decode)
    }

    /// The logits of the `i`-th feed of the last decode call.
    pub(super) fn logits(&self, i: usize) -> &[f32] {
        self.ctx.get_logits_ith(i as i32)
    }

    /// Forgets sequence `seq`.
    pub(super) fn clear(&mut self, seq: u32) -> Result<(), ModelError> {
        if let Some(p) = self.next_pos.get_mut(seq as usize) {
            *p = 0;
        }
        self.ctx
            .clear_kv_cache_seq(Some(seq), None, None)
            .map(|_| ())
            .map_err(ModelError::Kv)
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
