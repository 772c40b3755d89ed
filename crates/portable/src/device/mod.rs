//! The portable engine on a device: the same step as [`crate::Session`], written as
//! data-parallel kernels (`kernels.cu`) that a CUDA GPU runs, or the host runs as
//! loops (the emulator, which the tests check against the CPU engine bit for bit on
//! any machine).
//!
//! - [`Device`]: where kernels run: [`Device::cuda`] (the driver API and NVRTC, both
//!   loaded at run time, so one binary runs with and without a GPU) or
//!   [`Device::host`];
//! - [`DeviceSession`]: a session whose weights, caches and activations live on the
//!   device.
//!
//! Each kernel computes one output per index, from its own inputs, in the order of
//! docs/ENGINE.md: so a device gives the CPU engine's bits, and no batch or launch
//! shape changes them.

mod cuda;
mod host;
mod session;

pub use cuda::{install_kernels, kernel_cache_dir, kernel_file, ptx};
pub use session::{agrees_with_cpu, DeviceSession, DeviceStepError};

/// The kernels' source: compiled by NVRTC for a GPU, and by the build script for the
/// host.
pub(crate) const SOURCE: &str = include_str!("kernels.cu");

/// What went wrong on a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// There is no CUDA driver library: no GPU to use, the usual case on a CPU machine.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// A library of the device's runtime could not be loaded.
    #[error("cannot load {lib}: {why}")]
    Load {
        /// The library.
        lib: String,
        /// Why.
        why: String,
    },
    /// A call into the device's runtime failed.
    #[error("{call} failed: {why}")]
    Call {
        /// The call.
        call: &'static str,
        /// The runtime's message.
        why: String,
    },
    /// NVRTC did not compile the kernels.
    #[error("compiling the kernels: {0}")]
    Compile(String),
    /// A step larger than a launch can index.
    #[error("a launch of {0} threads is too large")]
    TooLarge(u64),
}

/// The kernels of `kernels.cu`, each over a count of independent indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kernel {
    Embed,
    RmsNorm,
    Quant,
    MatMul,
    Rope,
    Store,
    Scores,
    Softmax,
    Mix,
    Add,
    SiluMul,
    SlideOut,
    SlideIn,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 13] = [
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::Quant,
        Kernel::MatMul,
        Kernel::Rope,
        Kernel::Store,
        Kernel::Scores,
        Kernel::Softmax,
        Kernel::Mix,
        Kernel::Add,
        Kernel::SiluMul,
        Kernel::SlideOut,
        Kernel::SlideIn,
    ];

    /// Its name in `kernels.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embed => "embed",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Quant => "quant",
            Kernel::MatMul => "matmul",
            Kernel::Rope => "rope",
            Kernel::Store => "store",
            Kernel::Scores => "scores",
            Kernel::Softmax => "softmax",
            Kernel::Mix => "mix",
            Kernel::Add => "add",
            Kernel::SiluMul => "silu_mul",
            Kernel::SlideOut => "slide_out",
            Kernel::SlideIn => "slide_in",
        }
    }

    /// Its place in [`Kernel::ALL`] (the declaration order).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Where a device's memory is: an address on it (or in the host, for the emulator).
pub(crate) type Addr = u64;

/// The operations a session needs of a device.
pub(crate) trait Backend: Send {
    /// `bytes` of zeroed device memory, kept until the backend is dropped.
    fn alloc(&mut self, bytes: usize) -> Result<Addr, DeviceError>;
    /// Copies `src` to `dst`.
    fn upload(&mut self, dst: Addr, src: &[u8]) -> Result<(), DeviceError>;
    /// Copies from `src` into `dst` once every launch before it is done.
    fn download(&mut self, src: Addr, dst: &mut [u8]) -> Result<(), DeviceError>;
    /// Runs `kernel` over indices `0..n`; `params` are the bytes of its parameter
    /// block (a `#[repr(C)]` struct of `params`, the same layout as in kernels.cu).
    fn launch(&mut self, kernel: Kernel, n: u32, params: &[u8]) -> Result<(), DeviceError>;
    /// What the device is, for messages and benchmarks.
    fn describe(&self) -> String;
}

/// A device to run sessions on.
pub struct Device(pub(crate) Box<dyn Backend>);

impl Device {
    /// The host, running each kernel as a loop split over rayon's threads: slow, but
    /// the same arithmetic as a GPU's, on any machine.
    pub fn host() -> Device {
        Device(Box::new(host::Host::default()))
    }

    /// The host emulator built with fused multiply-adds, which the spec forbids: a
    /// device that breaks it, for testing that the engine's probe refuses such a one.
    /// None where the CPU has no fused multiply-add.
    #[doc(hidden)]
    pub fn host_fused() -> Option<Device> {
        host::Host::fused().map(|h| Device(Box::new(h)))
    }

    /// The first CUDA GPU, through the driver library (`libcuda.so.1`) and NVRTC
    /// (`$NACRITHFS_NVRTC`, else `libnvrtc.so`), both loaded now: an error, not a
    /// link failure, where there are none.
    pub fn cuda() -> Result<Device, DeviceError> {
        Ok(Device(Box::new(cuda::Cuda::open()?)))
    }

    /// What the device is.
    pub fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Parameter blocks of the kernels, the same layout as the structs of kernels.cu.
pub(crate) mod params {
    #![allow(missing_docs)]
    use super::Addr;

    /// A parameter block's bytes, for [`super::Backend::launch`].
    pub(crate) fn bytes<T: Copy>(p: &T) -> &[u8] {
        // SAFETY: every parameter block is a #[repr(C)] struct of u64, u32 and f32
        // fields ordered so that it has no padding, so all its bytes are initialised;
        // the slice borrows `p` for its own lifetime.
        unsafe { std::slice::from_raw_parts(p as *const T as *const u8, std::mem::size_of::<T>()) }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Embed {
        pub x: Addr,
        pub q: Addr,
        pub d: Addr,
        pub m: Addr,
        pub token: Addr,
        pub dim: u32,
        pub kind: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct RmsNorm {
        pub x: Addr,
        pub w: Addr,
        pub out: Addr,
        pub rows: Addr,
        pub dim: u32,
        pub eps: f32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Quant {
        pub x: Addr,
        pub q: Addr,
        pub d: Addr,
        pub s: Addr,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct MatMul {
        pub q: Addr,
        pub d: Addr,
        pub m: Addr,
        pub aq: Addr,
        pub ad: Addr,
        pub as_: Addr,
        pub out: Addr,
        pub rows: u32,
        pub cols: u32,
        pub streams: u32,
        pub kind: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Rope {
        pub x: Addr,
        pub cs: Addr,
        pub heads: u32,
        pub half: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Store {
        pub k: Addr,
        pub v: Addr,
        pub kc: Addr,
        pub vc: Addr,
        pub seq: Addr,
        pub pos: Addr,
        pub kvd: u32,
        pub hd: u32,
        pub ctx: u32,
        pub layer: u32,
        pub layers: u32,
        pub _pad: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Attend {
        pub q: Addr,
        pub kc: Addr,
        pub vc: Addr,
        pub seq: Addr,
        pub pos: Addr,
        pub w: Addr,
        pub out: Addr,
        pub heads: u32,
        pub kvh: u32,
        pub hd: u32,
        pub ctx: u32,
        pub layer: u32,
        pub layers: u32,
        pub scale: f32,
        pub _pad: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Elementwise {
        pub a: Addr,
        pub b: Addr,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct Slide {
        pub kc: Addr,
        pub vc: Addr,
        pub tmp_k: Addr,
        pub tmp_v: Addr,
        pub cs: Addr,
        pub seq: u32,
        pub layers: u32,
        pub kvh: u32,
        pub hd: u32,
        pub ctx: u32,
        pub slide: u32,
    }
}
