#!/usr/bin/env bash
# The portable engine built for 64-bit Arm and run under qemu-user: its golden test
# (crates/portable/tests/golden.rs) must give the same SHA-256 of logits as on x86-64,
# for the CPU engine (LLVM's NEON code for the baseline loops) and for the device
# kernels' host build (g++ for aarch64). That is what lets a blob made on an x86
# machine decode on an Arm one. Needs network once for the cross tools; CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v rustup >/dev/null; then
    echo "arm-check: SKIP: no rustup to add the aarch64 target with"
    exit 0
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
    apt-get update -qq
    apt-get install -y --no-install-recommends qemu-user gcc-aarch64-linux-gnu \
        g++-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
    rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
cargo test --profile ci -p nacrithfs-portable --target aarch64-unknown-linux-gnu --test golden -- --nocapture
