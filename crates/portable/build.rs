//! Compiles the device kernels (src/device/kernels.cu) for the host: the emulator the
//! tests run them on. The C++ compiler must not fuse a multiply and an add
//! (`-ffp-contract=off`) or reorder float arithmetic (no fast-math), so that the loops
//! compute what the spec writes.

fn main() {
    let src = "src/device/kernels.cu";
    println!("cargo:rerun-if-changed={src}");
    cc::Build::new()
        .cpp(true)
        .flag("-xc++")
        .flag("-ffp-contract=off")
        .flag("-fno-fast-math")
        .flag("-fno-math-errno")
        .opt_level(2)
        .warnings(true)
        .file(src)
        .compile("nacrithfs_kernels");
}
