#!/usr/bin/env bash
# Prepares what scripts/device-check.sh needs on a GPU machine that has no network and
# no Rust, in .devcheck/ (git-ignored), as two loads that each fit a 64 MiB transfer:
#
#   .devcheck/a/  the first half of the default model (xz)
#   .devcheck/b/  its second half; the release binary and tests/device.rs's test
#                 binary (stripped, xz); libgomp; the GPU kernels compiled here by
#                 NVRTC for compute capabilities 8.0 to 9.0 (cuda/: the device may
#                 have a driver but no CUDA toolkit); a text to benchmark; and blobs
#                 of texts made here by the CPU engine, with their sources, for the
#                 GPU to decode and to make again byte for byte.
#
# Then, on the device (the `run` tool carries ignored paths that are named):
#   1. carry .devcheck/a:  mkdir -p /tmp/devcheck && cp .devcheck/a/* /tmp/devcheck/
#   2. at once, carry .devcheck/b:  bash scripts/device-check.sh
# device-check.sh writes its report to $OUT/device-report.md (or ./device-out).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.devcheck
rm -rf "$D" && mkdir -p "$D/a" "$D/b/lib" "$D/b/blobs"
grep -qxF "/$D/" .git/info/exclude 2>/dev/null || echo "/$D/" >>.git/info/exclude

cargo build --release --bin nacrithfs
test_bin=$(cargo test --release --test device --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "device" and m.get("executable"):
        print(m["executable"])')
for b in target/release/nacrithfs:nacrithfs "$test_bin":device-test; do
    strip -o "$D/b/${b##*:}" "${b%%:*}"
    xz -T2 -6 -f "$D/b/${b##*:}"
done
cp "$(ldconfig -p | awk '/libgomp.so.1 .*x86-64/ {print $NF; exit}')" "$D/b/lib/"

# The kernels, compiled here (NVRTC from PyPI unless $NACRITHFS_NVRTC names one), after
# checking that NVRTC's PTX has no fused multiply-add.
export NACRITHFS_NVRTC="${NACRITHFS_NVRTC:-$(scripts/fetch-nvrtc.sh)}"
cargo build --release -p nacrithfs-portable --example ptx
NACRITHFS_REQUIRE_NVRTC=1 cargo test --release --test device -- nvrtc cubin
for arch in 80 86 89 90; do
    NACRITHFS_CUDA_CACHE="$D/b/cuda" target/release/examples/ptx --install "$arch"
done

model="${XDG_CACHE_HOME:-$HOME/.cache}/nacrithfs/SmolLM2-135M-Instruct.Q4_1.gguf"
xz -T2 -1 -c "$model" >"$D/model.xz"
size=$(stat -c %s "$D/model.xz")
head -c $((size / 2)) "$D/model.xz" >"$D/a/model.xz.1"
tail -c +$((size / 2 + 1)) "$D/model.xz" >"$D/b/model.xz.2"
rm "$D/model.xz"
sha256sum "$model" | awk '{print $1}' >"$D/b/model.sha256"

# Texts the CPU engine codes here; the GPU must decode these blobs and make the same.
cp ../shared/corpus/sample_100k.txt "$D/b/bench.txt"
head -c 16384 ../shared/corpus/sample_50k.txt >"$D/b/blobs/t16k.txt"
cp tests/data/english.txt "$D/b/blobs/english.txt"
for t in "$D"/b/blobs/*.txt; do
    NACRITHFS_DEVICE=cpu target/release/nacrithfs compress "$t" -o "${t%.txt}.nc" \
        --backend portable --streams 16 --chunk-size 1024 --force
done
du -sh "$D/a" "$D/b"
