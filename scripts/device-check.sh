#!/usr/bin/env bash
# The portable engine on a CUDA GPU (issue 17), in one run of at most 8 minutes on a
# machine with no network and no Rust. scripts/device-build.sh prepares what it needs
# and says how to carry it (the model's first half in /tmp/devcheck/, the rest in
# .devcheck/b/).
#
# It checks, and reports in $OUT/device-report.md (OUT defaults to ./device-out):
#   1. tests/device.rs on the GPU (NACRITHFS_REQUIRE_GPU=1): the GPU's logits are the
#      CPU engine's bits alone, in a batch, across slides and after a clear; a stream
#      alone and inside batches of 64 and 512 gives the same logits; the whole engine
#      on the GPU makes the CPU engine's blobs byte for byte, and each decodes the
#      other's (the kernels are the ones device-build.sh compiled, in .devcheck/b/cuda;
#      NVRTC, if this machine has one, compiles them for another GPU);
#   2. blobs made on the CPU of the build machine decode on the GPU, and the GPU makes
#      them again byte for byte (so its blobs decode on that CPU);
#   3. bench-engine on the GPU at 1 to 1024 streams, and on this machine's CPU at 16.
#
# DEVICE=host STREAMS=1,4 runs the same script on the build machine with the kernels
# emulated (a dry run of its plumbing: the GPU's own tests then skip).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
STREAMS=${STREAMS:-1,4,16,64,256,1024}
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
R="$OUT/device-report.md"
B=.devcheck/b
W=/tmp/devcheck
mkdir -p "$W/bin"
log() { echo "$*" | tee -a "$R"; }
fail=0
check() { # check NAME COMMAND...: runs it, logs pass or FAIL with its output's tail
    local name=$1
    shift
    if "$@" >"$W/out.txt" 2>&1; then
        log "- PASS: $name"
    else
        log "- **FAIL**: $name (exit $?)"
        { echo '```'; tail -n 30 "$W/out.txt"; echo '```'; } >>"$R"
        fail=1
    fi
}

: >"$R"
log "# Device check, $(date -u +%Y-%m-%dT%H:%MZ)"
log ""
log '```'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$R"
nproc | sed 's/^/cpu cores: /' | tee -a "$R"
log '```'

# The model, the binaries and the libraries.
model_dir="${XDG_CACHE_HOME:-$HOME/.cache}/nacrithfs"
model="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$model_dir"
python3 - "$W/model.xz.1" "$B/model.xz.2" "$model" <<'EOF' || { log "cannot unpack the model"; exit 1; }
import lzma, sys
with open(sys.argv[3], "wb") as out:
    out.write(lzma.decompress(open(sys.argv[1], "rb").read() + open(sys.argv[2], "rb").read()))
EOF
[ "$(sha256sum "$model" | awk '{print $1}')" = "$(cat "$B/model.sha256")" ] ||
    { log "the model's SHA-256 is wrong"; exit 1; }
for b in nacrithfs device-test; do
    python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.decompress(open(sys.argv[1],"rb").read()))' \
        "$B/$b.xz" "$W/bin/$b" && chmod +x "$W/bin/$b"
done
if ldd "$W/bin/nacrithfs" | grep -q 'not found'; then
    export LD_LIBRARY_PATH="$PWD/$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvrtc=$(find /usr/local/cuda*/ /opt /usr/lib -name 'libnvrtc.so*' -not -name '*alt*' 2>/dev/null |
    grep -v builtins | sort -V | tail -n 1)
[ -n "$nvrtc" ] && export NACRITHFS_NVRTC="$nvrtc" LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! ldconfig -p | grep -q 'libcuda.so.1'; then
    cuda=$(find /usr/local/nvidia /usr/lib /usr/lib64 -name 'libcuda.so.1' 2>/dev/null | head -n 1)
    [ -n "$cuda" ] && export LD_LIBRARY_PATH="$(dirname "$cuda"):$LD_LIBRARY_PATH"
fi
# The kernels compiled on the build machine, where the engine looks first.
mkdir -p "$W/cuda" && cp "$B"/cuda/*.cubin "$W/cuda/" 2>/dev/null
export NACRITHFS_CUDA_CACHE="$W/cuda"
log ""
log "NVRTC: ${nvrtc:-not found}; kernels compiled on the build machine: $(cd "$W/cuda" && ls 2>/dev/null | tr '\n' ' ')"
export NACRITHFS_TEST_BIN="$W/bin/nacrithfs"
[ "$DEVICE" = cuda ] && export NACRITHFS_REQUIRE_GPU=1
N="$W/bin/nacrithfs"

log ""
log "## Bit-identity"
check "tests/device.rs (GPU against the CPU engine, batches of 3, 64 and 512, the engine's blobs)" \
    timeout 240 "$W/bin/device-test" --test-threads 1
grep -E '^test |device:' "$W/out.txt" | sed 's/^/    /' >>"$R"
for t in "$B"/blobs/*.txt; do
    name=$(basename "$t" .txt)
    check "$name: the CPU's blob decodes on $DEVICE" bash -c \
        "NACRITHFS_DEVICE=$DEVICE '$N' decompress '${t%.txt}.nc' -o '$W/$name.back' --force && cmp '$W/$name.back' '$t'"
    check "$name: $DEVICE makes the CPU's blob byte for byte" bash -c \
        "NACRITHFS_DEVICE=$DEVICE '$N' compress '$t' -o '$W/$name.nc' --backend portable --streams 16 --chunk-size 1024 --force && cmp '$W/$name.nc' '${t%.txt}.nc'"
done

log ""
log "## bench-engine"
left=$((start + 470 - $(date +%s)))
log "NACRITHFS_DEVICE=$DEVICE, 128 tokens a stream:"
NACRITHFS_DEVICE=$DEVICE timeout $((left * 3 / 4)) "$N" bench-engine "$B/bench.txt" \
    --streams-list "$STREAMS" --tokens-per-stream 128 --backend portable \
    --csv "$OUT/bench-gpu.csv" >>"$R" 2>"$W/bench.err" || { log "(stopped: exit $?)"; tail -n 5 "$W/bench.err" >>"$R"; }
left=$((start + 470 - $(date +%s)))
if [ "$left" -gt 30 ]; then
    log ""
    log "This machine's CPU (NACRITHFS_DEVICE=cpu), for comparison:"
    NACRITHFS_DEVICE=cpu timeout "$left" "$N" bench-engine "$B/bench.txt" \
        --streams-list 16 --tokens-per-stream 128 --backend portable >>"$R" 2>&1 || log "(stopped: exit $?)"
fi
log ""
log "Took $(($(date +%s) - start)) s; $([ $fail = 0 ] && echo 'every check passed' || echo 'SOME CHECKS FAILED')."
exit $fail
