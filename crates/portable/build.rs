//! Compiles the device kernels (src/device/kernels.cu) for the host: the emulator the
//! tests run them on. The C++ compiler must not fuse a multiply and an add
//! (`-ffp-contract=off`) or reorder float arithmetic (no fast-math), so that the loops
//! compute what the spec writes. A second copy is built with fused multiply-adds (where
//! the CPU has them), as a device that breaks the spec, for the tests of the probe.

fn build(prefix: &str, fused: bool) {
    let mut b = cc::Build::new();
    b.cpp(true)
        .flag("-xc++")
        .flag("-fno-fast-math")
        .flag("-fno-math-errno")
        .define("NC_PREFIX", prefix)
        .opt_level(2)
        .warnings(true)
        .file("src/device/kernels.cu");
    if fused {
        b.flag("-ffp-contract=fast");
        if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
            b.flag("-mfma");
        }
    } else {
        b.flag("-ffp-contract=off");
    }
    b.compile(&format!("nacrithfs_kernels_{prefix}"));
}

fn main() {
    println!("cargo:rerun-if-changed=src/device/kernels.cu");
    build("nc_host_", false);
    build("nc_fused_", true);
}
