//! How a model is loaded and where it runs: nothing here changes a bit of what is
//! predicted.

use super::BackendChoice;

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

/// Environment variable giving [`DeviceChoice`]'s default.
pub const DEVICE_ENV: &str = "NACRITHFS_DEVICE";
