//! The device kernels as NVRTC compiles them; needs NVRTC (`$NACRITHFS_NVRTC`), not a
//! GPU.
//! - `cargo run -p nacrithfs-portable --example ptx -- [ARCH]` prints the PTX for a
//!   compute capability (default 90, for 9.0).
//! - `... --example ptx -- --install [ARCH]` compiles the cubin for it into the kernel
//!   cache (`$NACRITHFS_CUDA_CACHE`, else `~/.cache/nacrithfs/cuda`) and prints its
//!   path: what a GPU machine without NVRTC runs.

use nacrithfs_portable::device;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let install = args.first().is_some_and(|a| a == "--install");
    if install {
        args.remove(0);
    }
    let arch = args.first().and_then(|a| a.parse().ok()).unwrap_or(90);
    let r = if install {
        device::install_kernels(&device::kernel_cache_dir(), arch)
            .map(|p| format!("{}\n", p.display()))
            .map_err(|e| e.to_string())
    } else {
        device::ptx(arch).map_err(|e| e.to_string())
    };
    match r {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("ptx: {e}");
            std::process::exit(1);
        }
    }
}
