//! Prints the PTX that NVRTC makes of the device kernels for a compute capability
//! (default 90): `cargo run -p nacrithfs-portable --example ptx -- 90`. Needs NVRTC
//! (`$NACRITHFS_NVRTC`), not a GPU.

fn main() {
    let arch = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(90);
    match nacrithfs_portable::device::ptx(arch) {
        Ok(p) => print!("{p}"),
        Err(e) => {
            eprintln!("ptx: {e}");
            std::process::exit(1);
        }
    }
}
