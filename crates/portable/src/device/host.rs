//! The emulator: kernels.cu compiled for the host by the build script, each kernel a
//! loop over a range of its indices, the ranges split over rayon's threads. Memory is
//! host memory, and an address is a pointer.

use super::{Addr, Backend, DeviceError, Kernel};
use rayon::prelude::*;
use std::ffi::c_void;

type HostKernel = unsafe extern "C" fn(start: u32, end: u32, params: *const c_void);

extern "C" {
    fn nc_host_embed(start: u32, end: u32, params: *const c_void);
    fn nc_host_rms_norm(start: u32, end: u32, params: *const c_void);
    fn nc_host_quant(start: u32, end: u32, params: *const c_void);
    fn nc_host_matmul(start: u32, end: u32, params: *const c_void);
    fn nc_host_rope(start: u32, end: u32, params: *const c_void);
    fn nc_host_store(start: u32, end: u32, params: *const c_void);
    fn nc_host_scores(start: u32, end: u32, params: *const c_void);
    fn nc_host_softmax(start: u32, end: u32, params: *const c_void);
    fn nc_host_mix(start: u32, end: u32, params: *const c_void);
    fn nc_host_add(start: u32, end: u32, params: *const c_void);
    fn nc_host_silu_mul(start: u32, end: u32, params: *const c_void);
    fn nc_host_slide_out(start: u32, end: u32, params: *const c_void);
    fn nc_host_slide_in(start: u32, end: u32, params: *const c_void);
}

fn entry(k: Kernel) -> HostKernel {
    match k {
        Kernel::Embed => nc_host_embed,
        Kernel::RmsNorm => nc_host_rms_norm,
        Kernel::Quant => nc_host_quant,
        Kernel::MatMul => nc_host_matmul,
        Kernel::Rope => nc_host_rope,
        Kernel::Store => nc_host_store,
        Kernel::Scores => nc_host_scores,
        Kernel::Softmax => nc_host_softmax,
        Kernel::Mix => nc_host_mix,
        Kernel::Add => nc_host_add,
        Kernel::SiluMul => nc_host_silu_mul,
        Kernel::SlideOut => nc_host_slide_out,
        Kernel::SlideIn => nc_host_slide_in,
    }
}

/// The host as a device.
#[derive(Default)]
pub(crate) struct Host {
    /// Every allocation, 16-byte aligned, kept until the device is dropped.
    mem: Vec<Vec<u128>>,
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
        let v = vec![0u128; bytes.div_ceil(16).max(1)];
        let a = v.as_ptr() as Addr;
        self.mem.push(v);
        Ok(a)
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
        let f = entry(kernel);
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
        "host (the kernels as loops)".into()
    }
}
