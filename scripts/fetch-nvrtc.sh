#!/usr/bin/env bash
# Fetches NVRTC, the CUDA compiler library the portable engine compiles its GPU
# kernels with, from PyPI (nvidia-cuda-nvrtc-cu12==12.8.93, checked by SHA-256) into
# ~/.cache/nacrithfs/nvrtc/, and prints the path of libnvrtc.so.12 (for
# $NACRITHFS_NVRTC). Needs no GPU. Idempotent.
#
# Only the build side needs it: scripts/device-build.sh compiles the kernels here for
# a GPU machine that has a driver but no CUDA toolkit. Where NVRTC is installed
# already, set NACRITHFS_NVRTC instead.
set -euo pipefail
WHEEL=nvidia_cuda_nvrtc_cu12-12.8.93-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
SHA256=a7756528852ef889772a84c6cd89d41dfa74667e24cca16bb31f8f061e3e9994
dir="${XDG_CACHE_HOME:-$HOME/.cache}/nacrithfs/nvrtc"
lib="$dir/libnvrtc.so.12"
if [ -f "$lib" ] && [ -f "$dir/libnvrtc-builtins.so.12.8" ]; then
    echo "$lib"; exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check \
    --only-binary=:all: --platform manylinux2010_x86_64 -d "$tmp" nvidia-cuda-nvrtc-cu12==12.8.93 >&2
echo "$SHA256  $tmp/$WHEEL" | sha256sum -c --status || { echo "fetch-nvrtc: sha256 mismatch for $WHEEL" >&2; exit 1; }
# libnvrtc loads its builtins from its own directory.
python3 - "$tmp/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in ("libnvrtc.so.12", "libnvrtc-builtins.so.12.8"):
        z.extract("nvidia/cuda_nvrtc/lib/" + m, sys.argv[2])
PY
for m in libnvrtc-builtins.so.12.8 libnvrtc.so.12; do
    mv "$tmp/nvidia/cuda_nvrtc/lib/$m" "$dir/$m.part" && mv "$dir/$m.part" "$dir/$m"
done
echo "$lib"
