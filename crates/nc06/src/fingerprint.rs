//! What made a blob: the model's weights and the inference build. Logits differ between
//! models and between builds (AVX2 vs AVX512, CPU vs CUDA), so a decoder must refuse a
//! blob whose fingerprint it does not share rather than produce wrong bytes.

use sha2::{Digest, Sha256};
use std::fmt;

/// 8 bytes of SHA-256 of the model file and 8 bytes of SHA-256 of the backend descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    /// The first 8 bytes of the model file's SHA-256.
    pub model: [u8; 8],
    /// The first 8 bytes of the SHA-256 of the inference backend's descriptor.
    pub backend: [u8; 8],
}

impl Fingerprint {
    /// The fingerprint of a model file (its SHA-256, `model_digest`) run by the backend that `backend_descriptor` describes.
    pub fn new(model_digest: &[u8], backend_descriptor: &str) -> Fingerprint {
        let mut model = [0u8; 8];
        model.copy_from_slice(&model_digest[..8]);
        let b = Sha256::digest(backend_descriptor.as_bytes());
        let mut backend = [0u8; 8];
        backend.copy_from_slice(&b[..8]);
        Fingerprint { model, backend }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model {} backend {}",
            hex(&self.model),
            hex(&self.backend)
        )
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
