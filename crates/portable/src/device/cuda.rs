//! A CUDA GPU through the driver API, with the kernels compiled by NVRTC when the
//! device is opened. Both libraries are loaded at run time, so the binary needs no
//! CUDA to build or to run where there is no GPU.
//!
//! NVRTC compiles kernels.cu with `--fmad=false` (no multiply and add fused into an
//! fma, which would round once where the spec rounds twice), IEEE division and square
//! root, and denormals kept: the options under which its arithmetic is the spec's.
//!
//! It compiles to the GPU's own machine code (a cubin), kept on disk by the hash of the
//! source and options ([`kernel_file`]), so NVRTC runs once per GPU kind, and a machine
//! with a driver but no NVRTC runs kernels compiled elsewhere. A cubin, unlike PTX,
//! also loads on a driver older than the NVRTC that made it (within CUDA 12).

use super::{Addr, Backend, DeviceError, Kernel, SOURCE};
use libloading::Library;
use sha2::{Digest, Sha256};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};

type CuResult = c_int;
type CuDevice = c_int;
type Ptr = *mut c_void;

const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

/// The options under which NVRTC's arithmetic is the spec's (module docs).
pub(crate) const NVRTC_OPTIONS: [&str; 4] = [
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// The driver API calls used, looked up once.
struct Driver {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_attr: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    retain: unsafe extern "C" fn(*mut Ptr, CuDevice) -> CuResult,
    release: unsafe extern "C" fn(CuDevice) -> CuResult,
    set_current: unsafe extern "C" fn(Ptr) -> CuResult,
    load_data: unsafe extern "C" fn(*mut Ptr, *const c_void) -> CuResult,
    unload: unsafe extern "C" fn(Ptr) -> CuResult,
    get_function: unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    memset: unsafe extern "C" fn(u64, u8, usize) -> CuResult,
    htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch: unsafe extern "C" fn(
        Ptr,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Ptr,
        *mut Ptr,
        *mut Ptr,
    ) -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    _lib: Library,
}

/// NVRTC's calls.
struct Nvrtc {
    create: unsafe extern "C" fn(
        *mut Ptr,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(Ptr, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Ptr, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(Ptr, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(Ptr, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Ptr) -> c_int,
    _lib: Library,
}

fn open_lib(names: &[String]) -> Result<Library, DeviceError> {
    let mut why = Vec::new();
    for n in names {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's
        // driver and compiler libraries, whose initialisers are sound to run.
        match unsafe { Library::new(n) } {
            Ok(l) => return Ok(l),
            Err(e) => why.push(format!("{n}: {e}")),
        }
    }
    Err(DeviceError::Load {
        lib: names.join(" or "),
        why: why.join("; "),
    })
}

/// Looks up `name` in `lib` as a value of type `T` (a function pointer).
fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, DeviceError> {
    // SAFETY: every `T` asked for is the function-pointer type of the C declaration
    // of `name` in NVIDIA's headers (cuda.h, nvrtc.h); the pointer is used only while
    // `lib`, kept beside it, is loaded.
    unsafe {
        lib.get::<T>(name.as_bytes())
            .map(|s| *s)
            .map_err(|e| DeviceError::Load {
                lib: name.into(),
                why: e.to_string(),
            })
    }
}

impl Driver {
    fn open() -> Result<Driver, DeviceError> {
        let lib = open_lib(&["libcuda.so.1".into(), "libcuda.so".into()]).map_err(|e| match e {
            DeviceError::Load { why, .. } => DeviceError::NoDriver(why),
            e => e,
        })?;
        Ok(Driver {
            init: sym(&lib, "cuInit")?,
            device_get: sym(&lib, "cuDeviceGet")?,
            device_name: sym(&lib, "cuDeviceGetName")?,
            device_attr: sym(&lib, "cuDeviceGetAttribute")?,
            retain: sym(&lib, "cuDevicePrimaryCtxRetain")?,
            release: sym(&lib, "cuDevicePrimaryCtxRelease_v2")?,
            set_current: sym(&lib, "cuCtxSetCurrent")?,
            load_data: sym(&lib, "cuModuleLoadData")?,
            unload: sym(&lib, "cuModuleUnload")?,
            get_function: sym(&lib, "cuModuleGetFunction")?,
            mem_alloc: sym(&lib, "cuMemAlloc_v2")?,
            mem_free: sym(&lib, "cuMemFree_v2")?,
            memset: sym(&lib, "cuMemsetD8_v2")?,
            htod: sym(&lib, "cuMemcpyHtoD_v2")?,
            dtoh: sym(&lib, "cuMemcpyDtoH_v2")?,
            launch: sym(&lib, "cuLaunchKernel")?,
            error_string: sym(&lib, "cuGetErrorString")?,
            _lib: lib,
        })
    }

    fn check(&self, call: &'static str, r: CuResult) -> Result<(), DeviceError> {
        if r == 0 {
            return Ok(());
        }
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string, or leaves it
        // null for an unknown code.
        let why = unsafe {
            (self.error_string)(r, &mut s);
            if s.is_null() {
                format!("CUDA error {r}")
            } else {
                format!("{} ({r})", CStr::from_ptr(s).to_string_lossy())
            }
        };
        Err(DeviceError::Call { call, why })
    }
}

impl Nvrtc {
    fn open() -> Result<Nvrtc, DeviceError> {
        let mut names: Vec<String> = std::env::var("NACRITHFS_NVRTC").into_iter().collect();
        names.extend(
            ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]
                .iter()
                .map(|s| s.to_string()),
        );
        let lib = open_lib(&names)?;
        Ok(Nvrtc {
            create: sym(&lib, "nvrtcCreateProgram")?,
            compile: sym(&lib, "nvrtcCompileProgram")?,
            log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
            log: sym(&lib, "nvrtcGetProgramLog")?,
            ptx_size: sym(&lib, "nvrtcGetPTXSize")?,
            ptx: sym(&lib, "nvrtcGetPTX")?,
            cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
            cubin: sym(&lib, "nvrtcGetCUBIN")?,
            destroy: sym(&lib, "nvrtcDestroyProgram")?,
            _lib: lib,
        })
    }

    /// kernels.cu compiled for compute capability `arch` (as 90 for 9.0): PTX for the
    /// virtual architecture, or the cubin of the real one.
    fn compile(&self, arch: u32, out: Output) -> Result<Vec<u8>, DeviceError> {
        let fail = |what: &str, r: c_int| DeviceError::Compile(format!("{what}: NVRTC error {r}"));
        let src = CString::new(SOURCE).map_err(|e| DeviceError::Compile(e.to_string()))?;
        let mut opts: Vec<CString> = NVRTC_OPTIONS
            .iter()
            .map(|o| CString::new(*o).unwrap_or_default())
            .collect();
        let target = match out {
            Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
            Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
        };
        opts.push(CString::new(target).unwrap_or_default());
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let (size, get) = match out {
            Output::Ptx => (self.ptx_size, self.ptx),
            Output::Cubin => (self.cubin_size, self.cubin),
        };
        let mut prog: Ptr = std::ptr::null_mut();
        // SAFETY: NVRTC's documented calls, with NUL-terminated strings that outlive
        // them, buffers of the sizes NVRTC reported, and the program destroyed once.
        unsafe {
            let r = (self.create)(
                &mut prog,
                src.as_ptr(),
                c"kernels.cu".as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            if r != 0 {
                return Err(fail("nvrtcCreateProgram", r));
            }
            let r = (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
            let out = if r != 0 {
                let mut n = 0usize;
                (self.log_size)(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                (self.log)(prog, log.as_mut_ptr() as *mut c_char);
                Err(DeviceError::Compile(
                    String::from_utf8_lossy(&log)
                        .trim_end_matches('\0')
                        .to_string(),
                ))
            } else {
                let mut n = 0usize;
                let r = size(prog, &mut n);
                let mut image = vec![0u8; n.max(1)];
                match (r, get(prog, image.as_mut_ptr() as *mut c_char)) {
                    (0, 0) => Ok(image),
                    (0, r) | (r, _) => Err(fail("nvrtcGetPTX/CUBIN", r)),
                }
            };
            (self.destroy)(&mut prog);
            out
        }
    }
}

/// What NVRTC is asked for.
#[derive(Clone, Copy)]
enum Output {
    /// PTX, the portable assembly, for a virtual architecture (compute_XX).
    Ptx,
    /// Machine code for a real one (sm_XX).
    Cubin,
}

/// Where compiled kernels are kept between runs: `$NACRITHFS_CUDA_CACHE`, else `cuda/`
/// in the cache directory, beside the model ([`crate::cache_dir`]).
pub fn kernel_cache_dir() -> PathBuf {
    std::env::var_os("NACRITHFS_CUDA_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cache_dir().join("cuda"))
}

/// The file in `dir` that holds kernels.cu compiled for compute capability `arch`: named
/// by the SHA-256 of the source and NVRTC's options, so a changed kernel or option is
/// never run from an old file.
pub fn kernel_file(dir: &Path, arch: u32) -> PathBuf {
    let mut h = Sha256::new();
    h.update(SOURCE.as_bytes());
    for o in NVRTC_OPTIONS {
        h.update(b"\0");
        h.update(o.as_bytes());
    }
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("kernels-{key}-sm_{arch}.cubin"))
}

/// Whether `image` looks like a cubin (an ELF file) rather than something else left
/// at its path.
fn is_cubin(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Compiles kernels.cu for `arch` with NVRTC and writes it where [`kernel_file`] says in
/// `dir` (through a temporary file, so a reader never sees half of one). Returns the
/// path. Needs NVRTC, not a GPU: `scripts/device-build.sh` makes the file for a machine
/// that has no NVRTC.
pub fn install_kernels(dir: &Path, arch: u32) -> Result<PathBuf, DeviceError> {
    let image = Nvrtc::open()?.compile(arch, Output::Cubin)?;
    save(dir, arch, &image).map_err(|e| DeviceError::Compile(format!("{}: {e}", dir.display())))
}

fn save(dir: &Path, arch: u32, image: &[u8]) -> std::io::Result<PathBuf> {
    let path = kernel_file(dir, arch);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", std::process::id(), arch));
    std::fs::write(&tmp, image)?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

/// Kernels as the driver loads them, and the file they were read from (`None` when
/// NVRTC made them in this process).
type Image = (std::sync::Arc<Vec<u8>>, Option<PathBuf>);

/// The kernels for `arch`: once per process; from the disk cache when it has them
/// (unless `fresh`), else by NVRTC (then kept there, where it can be written).
fn compiled(arch: u32, fresh: bool) -> Result<Image, DeviceError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    static CACHE: Mutex<Option<HashMap<u32, Image>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(i) = map.get(&arch).filter(|i| !fresh || i.1.is_none()) {
        return Ok(i.clone());
    }
    let dir = kernel_cache_dir();
    let file = kernel_file(&dir, arch);
    let kept = if fresh {
        None
    } else {
        std::fs::read(&file).ok().filter(|i| is_cubin(i))
    };
    let image = match kept {
        Some(i) => (Arc::new(i), Some(file)),
        None => {
            let i = Nvrtc::open()?.compile(arch, Output::Cubin)?;
            if let Err(e) = save(&dir, arch, &i) {
                log::debug!("cuda: kernels not kept in {}: {e}", dir.display());
            }
            (Arc::new(i), None)
        }
    };
    map.insert(arch, image.clone());
    Ok(image)
}

/// kernels.cu compiled to PTX for compute capability `arch` (90 for 9.0), with the
/// options that keep its arithmetic the spec's. Needs NVRTC only, not a GPU: the
/// tests compile the GPU's code where NVRTC is at hand.
pub fn ptx(arch: u32) -> Result<String, DeviceError> {
    let ptx = Nvrtc::open()?.compile(arch, Output::Ptx)?;
    Ok(String::from_utf8_lossy(&ptx)
        .trim_end_matches('\0')
        .to_string())
}

/// The first GPU, its primary context and the compiled kernels.
pub(crate) struct Cuda {
    drv: Driver,
    dev: CuDevice,
    ctx: Ptr,
    module: Ptr,
    funcs: Vec<Ptr>,
    mem: Vec<u64>,
    name: String,
    arch: u32,
}

// SAFETY: the context, module and functions are handles the driver lets any thread
// use once the context is current on it, which every method makes it first; `&mut
// self` keeps uses on one thread at a time.
unsafe impl Send for Cuda {}

impl Cuda {
    pub(crate) fn open() -> Result<Cuda, DeviceError> {
        let drv = Driver::open()?;
        let mut dev: CuDevice = 0;
        let mut ctx: Ptr = std::ptr::null_mut();
        let (mut major, mut minor) = (0, 0);
        let mut name = [0 as c_char; 256];
        // SAFETY: the driver's documented calls, each with valid out-pointers.
        unsafe {
            drv.check("cuInit", (drv.init)(0))?;
            drv.check("cuDeviceGet", (drv.device_get)(&mut dev, 0))?;
            drv.check(
                "cuDeviceGetName",
                (drv.device_name)(name.as_mut_ptr(), 255, dev),
            )?;
            drv.check(
                "cuDeviceGetAttribute",
                (drv.device_attr)(&mut major, ATTR_CC_MAJOR, dev),
            )?;
            drv.check(
                "cuDeviceGetAttribute",
                (drv.device_attr)(&mut minor, ATTR_CC_MINOR, dev),
            )?;
            drv.check("cuDevicePrimaryCtxRetain", (drv.retain)(&mut ctx, dev))?;
        }
        // SAFETY: `name` was zeroed and the driver wrote at most 255 bytes into it.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let arch = (major * 10 + minor) as u32;
        let mut cuda = Cuda {
            drv,
            dev,
            ctx,
            module: std::ptr::null_mut(),
            funcs: Vec::new(),
            mem: Vec::new(),
            name,
            arch,
        };
        cuda.current()?;
        let (image, kept) = compiled(arch, false)?;
        if let Err(e) = cuda.load(&image) {
            // A kept file the driver will not take (damaged, or made for another
            // driver) is made again, where NVRTC is at hand.
            let Some(file) = kept else { return Err(e) };
            log::warn!(
                "cuda: {} does not load ({e}); compiling the kernels again",
                file.display()
            );
            cuda.load(&compiled(arch, true)?.0)?;
        }
        Ok(cuda)
    }

    /// Loads `image` as the module and looks up every kernel in it.
    fn load(&mut self, image: &[u8]) -> Result<(), DeviceError> {
        // SAFETY: `image` is a whole cubin (an ELF image, which carries its own sizes)
        // from NVRTC or the kernel cache; the module's handles are kept in `self`, which
        // unloads it on drop (or here, when a kernel is missing from it).
        unsafe {
            self.drv.check(
                "cuModuleLoadData",
                (self.drv.load_data)(&mut self.module, image.as_ptr() as *const c_void),
            )?;
            self.funcs.clear();
            for k in Kernel::ALL {
                let mut f: Ptr = std::ptr::null_mut();
                let n = CString::new(k.name()).unwrap_or_default();
                let r = (self.drv.get_function)(&mut f, self.module, n.as_ptr());
                if let Err(e) = self.drv.check("cuModuleGetFunction", r) {
                    (self.drv.unload)(self.module);
                    self.module = std::ptr::null_mut();
                    return Err(e);
                }
                self.funcs.push(f);
            }
        }
        Ok(())
    }

    fn current(&self) -> Result<(), DeviceError> {
        // SAFETY: `ctx` is the retained primary context, alive until drop.
        self.drv.check("cuCtxSetCurrent", unsafe {
            (self.drv.set_current)(self.ctx)
        })
    }
}

impl Backend for Cuda {
    fn alloc(&mut self, bytes: usize) -> Result<Addr, DeviceError> {
        self.current()?;
        let mut a = 0u64;
        let n = bytes.max(16);
        // SAFETY: a plain allocation of n bytes, zeroed, freed on drop.
        unsafe {
            self.drv
                .check("cuMemAlloc", (self.drv.mem_alloc)(&mut a, n))?;
            self.mem.push(a);
            self.drv.check("cuMemsetD8", (self.drv.memset)(a, 0, n))?;
        }
        Ok(a)
    }

    fn upload(&mut self, dst: Addr, src: &[u8]) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: `dst` is an allocation of this context with room for `src` (the
        // session sizes every copy by its buffer); the copy is synchronous.
        self.drv.check("cuMemcpyHtoD", unsafe {
            (self.drv.htod)(dst, src.as_ptr() as *const c_void, src.len())
        })
    }

    fn download(&mut self, src: Addr, dst: &mut [u8]) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: as in `upload`; the copy waits for the launches before it.
        self.drv.check("cuMemcpyDtoH", unsafe {
            (self.drv.dtoh)(dst.as_mut_ptr() as *mut c_void, src, dst.len())
        })
    }

    fn launch(&mut self, kernel: Kernel, n: u32, params: &[u8]) -> Result<(), DeviceError> {
        if n == 0 {
            return Ok(());
        }
        self.current()?;
        const BLOCK: u32 = 256;
        let mut count = n;
        // The driver only reads the parameters (its API takes them as mutable).
        let mut args: [Ptr; 2] = [&mut count as *mut u32 as Ptr, params.as_ptr() as Ptr];
        // SAFETY: `args` points at the kernel's two parameters (its index count and
        // its parameter block, the layout of its C struct), which the driver copies
        // before cuLaunchKernel returns.
        self.drv.check("cuLaunchKernel", unsafe {
            (self.drv.launch)(
                self.funcs[kernel.index()],
                n.div_ceil(BLOCK),
                1,
                1,
                BLOCK,
                1,
                1,
                0,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} (CUDA, compute {}.{})",
            self.name,
            self.arch / 10,
            self.arch % 10
        )
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        if self.current().is_err() {
            return;
        }
        // SAFETY: each handle was made by this context and is released once.
        unsafe {
            for &a in &self.mem {
                (self.drv.mem_free)(a);
            }
            if !self.module.is_null() {
                (self.drv.unload)(self.module);
            }
            (self.drv.release)(self.dev);
        }
    }
}
