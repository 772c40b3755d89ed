#!/usr/bin/env bash
# nacrithfs built for 64-bit Arm and run under qemu-user. Needs network once for the
# cross tools; CI runs it.
# 1. The portable engine's golden test (crates/portable/tests/golden.rs) must give the
#    same SHA-256 of logits and tokens as on x86-64, for the CPU engine (LLVM's NEON
#    code for the baseline loops) and the device kernels' host build (g++ for aarch64).
# 2. The whole binary, built without llama.cpp (--no-default-features), must decode a
#    blob this machine's x86-64 build wrote, write the same blob byte for byte from
#    the same file, and the x86-64 build must decode that.
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

# 2. Blobs across the two machines.
cargo build --profile ci --bin nacrithfs
cargo build --profile ci --bin nacrithfs --no-default-features --target aarch64-unknown-linux-gnu
x86=target/ci/nacrithfs
arm="qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/ci/nacrithfs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# English, then bytes that take the binary path, then text again: a hybrid blob.
{ head -c 400 tests/data/english.txt; printf '\x00\x01\xff\xfe binary \x80\x81'; head -c 200 tests/data/multilingual.txt; } >"$work/in"
$x86 compress "$work/in" -o "$work/x86.nc"
$arm decompress "$work/x86.nc" -o "$work/arm.out"
cmp "$work/in" "$work/arm.out"
$arm compress "$work/in" -o "$work/arm.nc"
cmp "$work/x86.nc" "$work/arm.nc"
$x86 decompress "$work/arm.nc" -o "$work/x86.out"
cmp "$work/in" "$work/x86.out"
# What it cannot do, it says: --backend llama is an error naming the missing feature.
if $arm compress --backend llama "$work/in" -o "$work/llama.nc" 2>"$work/err"; then
    echo "arm-check: --backend llama worked in a build without llama.cpp" >&2
    exit 1
fi
grep -q "built without llama.cpp" "$work/err" || { cat "$work/err" >&2; exit 1; }
echo "arm-check: a $(stat -c %s "$work/in")-byte file: the x86-64 and aarch64 builds write the same $(stat -c %s "$work/x86.nc")-byte blob, and each decodes the other's"
