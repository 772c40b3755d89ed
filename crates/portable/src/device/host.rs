//! The emulator: kernels.cu compiled for the host by the build script, each kernel a
//! loop over a range of its indices, the ranges split over rayon's threads. Memory is
//! host memory, and an address is a pointer.

use super::{Addr, Backend, DeviceError, Kernel};
use rayon::prelude::*;
use std::alloc::Layout;
use std::ffi::c_void;

type HostKernel = unsafe extern "C" fn(start: u32, end: u32, params: *const c_void);

/// Declares both builds' entry points (`nc_host_<name>`, the spec's, and
/// `nc_fused_<name>`, with fused multiply-adds) and the table from [`Kernel`] to them,
/// from one list.
macro_rules! entries {
    ($($kernel:ident => $name:literal),* $(,)?) => {
        #[allow(non_snake_case)]
        mod spec {
            use std::ffi::c_void;
            extern "C" {
                $(#[link_name = concat!("nc_host_", $name)]
                pub fn $kernel(start: u32, end: u32, params: *const c_void);)*
            }
        }
        #[allow(non_snake_case)]
        mod fused {
            use std::ffi::c_void;
            extern "C" {
                $(#[link_name = concat!("nc_fused_", $name)]
                pub fn $kernel(start: u32, end: u32, params: *const c_void);)*
            }
        }
        fn entry(k: Kernel, with_fma: bool) -> HostKernel {
            match (k, with_fma) {
                $((Kernel::$kernel, false) => spec::$kernel,
                  (Kernel::$kernel, true) => fused::$kernel,)*
            }
        }
    };
}

entries!(
    Embed => "embed", RmsNorm => "rms_norm", Quant => "quant", MatMul => "matmul",
    Rope => "rope", Store => "store", Scores => "scores", Softmax => "softmax",
    Mix => "mix", Add => "add", SiluMul => "silu_mul", SlideOut => "slide_out",
    SlideIn => "slide_in",
);

/// An allocation of the host as a device, freed when the device is dropped.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: a Buf owns its memory alone; the pointer is not shared with another owner.
unsafe impl Send for Buf {}

/// The host as a device.
#[derive(Default)]
pub(crate) struct Host {
    /// Every allocation, 16-byte aligned, kept until the device is dropped.
    mem: Vec<Buf>,
    /// Whether it runs the copy built with fused multiply-adds.
    fused: bool,
}

impl Host {
    /// The emulator of the copy built with fused multiply-adds, or None where the CPU
    /// has none (its code would not run).
    pub(crate) fn fused() -> Option<Host> {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("fma") {
            return None;
        }
        Some(Host {
            mem: Vec::new(),
            fused: true,
        })
    }
}

/// An address made by `alloc`, passed across threads.
#[derive(Clone, Copy)]
struct Params(*const c_void);
// SAFETY: the parameter block is only read, and lives on the caller's stack until
// every thread of the launch has returned.
unsafe impl Sync for Params {}
// SAFETY: as above.
unsafe impl Send for Params {}

impl Params {
    /// The pointer (a method, so closures capture the whole `Params`, which is Sync).
    fn get(&self) -> *const c_void {
        self.0
    }
}

impl Backend for Host {
    fn alloc(&mut self, bytes: usize) -> Result<Addr, DeviceError> {
        // Sized by the session (streams x window): too large is an error, not an
        // abort. Zeroed lazily, as a device's memory is: pages no step reaches are
        // never touched.
        let fail = || DeviceError::Call {
            call: "alloc",
            why: format!("{bytes} bytes of host memory"),
        };
        let layout = Layout::from_size_align(bytes.max(16), 16).map_err(|_| fail())?;
        // SAFETY: the layout's size is at least 16, not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(fail());
        }
        self.mem.push(Buf { ptr, layout });
        Ok(ptr as Addr)
    }

    fn upload(&mut self, dst: Addr, src: &[u8]) -> Result<(), DeviceError> {
        // SAFETY: `dst` came from `alloc` with room for `src` (the session sizes every
        // copy by the buffer it allocated), and host buffers never overlap a slice the
        // caller holds.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&mut self, src: Addr, dst: &mut [u8]) -> Result<(), DeviceError> {
        // SAFETY: as in `upload`, the other way.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&mut self, kernel: Kernel, n: u32, params: &[u8]) -> Result<(), DeviceError> {
        let f = entry(kernel, self.fused);
        let p = Params(params.as_ptr() as *const c_void);
        // Each index writes only its own outputs, so ranges run in any order.
        let per = 1024u32;
        (0..n.div_ceil(per)).into_par_iter().for_each(|c| {
            let (start, end) = (c * per, ((c + 1) * per).min(n));
            // SAFETY: `params` is the kernel's parameter block (the session builds it
            // from the matching `params` struct), its addresses point into this
            // device's allocations, sized for every index below n; ranges don't
            // overlap, and no index writes what another reads in the same launch.
            unsafe { f(start, end, p.get()) }
        });
        Ok(())
    }

    fn describe(&self) -> String {
        match self.fused {
            false => "host (the kernels as loops)".into(),
            true => "host (the kernels as loops, multiply-adds fused)".into(),
        }
    }
}
