//! The portable engine as a backend: which model files it runs, on which device, and
//! the descriptor its fingerprints hash (its spec, nothing of the machine).

use super::{Backend, BackendChoice, DeviceChoice, ModelError, PREDICTOR_VERSION};
use std::path::Path;

/// What the backend digest of a portable-engine fingerprint hashes: the spec of its
/// arithmetic and the predictor version, nothing of the build or the machine.
pub(crate) fn portable_descriptor() -> String {
    format!(
        "nacrithfs-portable spec {}; predictor {PREDICTOR_VERSION}",
        nacrithfs_portable::SPEC_VERSION
    )
}

/// Where the portable engine's device sessions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    Cuda,
    Host,
}

impl Place {
    pub(super) fn open(self) -> Result<nacrithfs_portable::device::Device, ModelError> {
        match self {
            Place::Cuda => nacrithfs_portable::device::Device::cuda().map_err(ModelError::Device),
            Place::Host => Ok(nacrithfs_portable::device::Device::host()),
        }
    }
}

/// The device that `choice` puts the portable engine on, if any. A GPU is opened here
/// once and must give the CPU engine's logits bit for bit on a short probe
/// (`agrees_with_cpu`) before anything is coded on it; then each session opens its own.
pub(super) fn portable_device(
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

/// The portable engine's model of the file at `path` when `choice` has it compute the
/// logits: always for `portable`, never for `llama`, and for `auto` when the engine
/// runs the file's architecture, tokenizer and weight types (else llama.cpp does, and
/// a log line says why). Otherwise why llama.cpp is to run it. A damaged file is an
/// error under every choice.
pub(super) fn portable_for(
    path: &Path,
    choice: BackendChoice,
) -> Result<Result<nacrithfs_portable::Model, String>, ModelError> {
    let err = |source| ModelError::Portable {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    match choice {
        BackendChoice::Only(Backend::Llama) => Ok(Err(
            "llama.cpp is asked for (--backend llama, or a blob it coded)".into(),
        )),
        BackendChoice::Only(Backend::Portable) => {
            nacrithfs_portable::Model::load(path).map(Ok).map_err(err)
        }
        BackendChoice::Auto => match nacrithfs_portable::Model::load(path) {
            Ok(m) => Ok(Ok(m)),
            Err(e) if e.unsupported() => {
                log::info!("model {}: llama.cpp codes it ({e})", path.display());
                let what = match &e {
                    nacrithfs_portable::LoadError::Gguf { source, .. } => source.to_string(),
                    e => e.to_string(),
                };
                Ok(Err(format!("the portable engine does not run it: {what}")))
            }
            Err(e) => Err(err(e)),
        },
    }
}
