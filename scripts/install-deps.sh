#!/usr/bin/env bash
# System packages nacrithfs needs on Debian 12: cmake + libclang (llama.cpp build), g++
# (the portable engine's device kernels, built for the host as their emulator),
# fuse3 (fusermount3 for clean unmounts), python3-pip (fetching the model wheel), and
# what the benchmarks use: the classical compressors, GNU time (peak RSS), fio and
# bindfs (the passthrough mount scripts/bench-fs.sh compares with), a TrueType font for
# the PNG plots, and libacl1-dev for building pjdfstest (scripts/pjdfstest.sh). Idempotent.
set -euo pipefail
pkgs=(cmake libclang-dev clang g++ fuse3 python3 python3-pip unzip gzip bzip2 xz-utils zstd brotli fio bindfs fonts-dejavu-core pkg-config time bc libacl1-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || { echo "install-deps: Rust (cargo >= 1.89) is required; see https://rustup.rs" >&2; exit 1; }
fi
