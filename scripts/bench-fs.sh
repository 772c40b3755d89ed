#!/usr/bin/env bash
# Filesystem benchmark: the nacrithfs mount beside a plain FUSE passthrough (bindfs) of
# a second backing directory on the same disk, measured the same way through each.
#
#   binary data (fio, psync): sequential writes in 1 MiB and 4 KiB blocks and random
#     4 KiB writes (nacrithfs: into staging; the time its background compression then
#     takes is reported on its own), sequential 1 MiB and random 4 KiB reads cold
#     (fresh mount, dropped caches: nacrithfs decodes the blob), warm (page cache), and
#     after drop_caches on a live mount (nacrithfs: its LRU of decoded extents);
#   English text: time to compress it (nacrithfs wait), time to first byte and to the
#     end of a cold read (the model decodes), warm and LRU re-reads, then a line
#     appended and 4 KiB overwritten in the compressed file (each timed), and the
#     background compression of those changes;
#   space: bytes in the backing directory against the file sizes seen in the mount;
#   memory: the nacrithfs daemon's peak RSS over the writes and over the reads.
#
# Prints Markdown tables with nacrithfs/passthrough ratios, also written to
# $OUT/fs.md (and the raw numbers to $OUT/fs.csv). Needs root (mounts, drop_caches),
# fio and bindfs (scripts/install-deps.sh) and a release build.
#
# Usage: scripts/bench-fs.sh
# Env: NACRITHFS (binary, default target/release/nacrithfs), SIZE (fio file size,
# default 64M), RUNTIME (seconds, cap per fio job, default 30), TEXT (English text,
# default ../shared/corpus/sample_50k.txt), TEXT_BYTES (bytes of it to use, default
# 16384), WORKDIR (where the backing dirs and mountpoints go, default /var/tmp),
# OUT (default bench-out), SKIP_TEXT (set: the binary steps only), SKIP_BINARY (set:
# the text steps only, e.g. to time several text sizes),
# NACRITHFS_MOUNT_ARGS (extra `nacrithfs mount` flags),
# BINDFS_ARGS (default "-o big_writes": without it libfuse 2 splits every write into
# 4 KiB requests and the passthrough writes ~5x slower, a straw man),
# FIO_WRITE_ARGS (default "--refill_buffers": fresh random data in every block, i.e.
# incompressible; e.g. "--buffer_compress_percentage=50 --refill_buffers" for half
# compressible data).
set -euo pipefail
export LC_ALL=C

bin="${NACRITHFS:-target/release/nacrithfs}"
size="${SIZE:-64M}"
runtime="${RUNTIME:-30}"
text="${TEXT:-../shared/corpus/sample_50k.txt}"
text_bytes="${TEXT_BYTES:-16384}"
out="${OUT:-bench-out}"

die() { echo "bench-fs: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (FUSE mounts and /proc/sys/vm/drop_caches)"
[ -x "$bin" ] || die "$bin missing: cargo build --release"
for t in fio bindfs python3 mountpoint; do
    command -v "$t" >/dev/null || die "$t missing: scripts/install-deps.sh"
done
[ -r "$text" ] || die "$text missing (set TEXT to an English text file)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
mkdir -p "$out"
work="$(mktemp -d "${WORKDIR:-/var/tmp}/nacrithfs-bench.XXXXXX")"
nc_back="$work/backing-nacrithfs" nc_mnt="$work/mnt-nacrithfs"
pt_back="$work/backing-passthrough" pt_mnt="$work/mnt-passthrough"
mkdir -p "$nc_back" "$nc_mnt" "$pt_back" "$pt_mnt"
nc_log="$out/bench-fs-nacrithfs.log"
: > "$nc_log"
nc_pid=""

# --- mounts -------------------------------------------------------------------------
wait_mounted() { # MNT PID-or-empty
    local i
    for i in $(seq 1 600); do
        mountpoint -q "$1" && return 0
        if [ -n "$2" ] && ! kill -0 "$2" 2>/dev/null; then
            tail -5 "$nc_log" >&2
            die "nacrithfs mount exited before $1 was mounted"
        fi
        sleep 0.1
    done
    die "$1 not mounted after 60 s"
}
force_unmount() {
    mountpoint -q "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null || fusermount -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1"
}
start_nc() {
    # shellcheck disable=SC2086
    "$bin" mount "$nc_back" "$nc_mnt" ${NACRITHFS_MOUNT_ARGS:-} 2>>"$nc_log" &
    nc_pid=$!
    wait_mounted "$nc_mnt" "$nc_pid"
}
stop_nc() {
    if [ -n "$nc_pid" ]; then
        kill -TERM "$nc_pid" 2>/dev/null || true
        local i
        for i in $(seq 1 600); do kill -0 "$nc_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nc_pid" 2>/dev/null || true
        wait "$nc_pid" 2>/dev/null || true
        nc_pid=""
    fi
    force_unmount "$nc_mnt"
}
start_pt() {
    # shellcheck disable=SC2086
    bindfs ${BINDFS_ARGS--o big_writes} "$pt_back" "$pt_mnt"
    wait_mounted "$pt_mnt" ""
}
stop_pt() { force_unmount "$pt_mnt"; }
cleanup() {
    stop_nc || true
    stop_pt || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each mount is driven through the same steps; these name its start/stop/settle.
restart() { if [ "$1" = nc ]; then stop_nc; start_nc; else stop_pt; start_pt; fi; }
mnt_of() { if [ "$1" = nc ]; then echo "$nc_mnt"; else echo "$pt_mnt"; fi; }
back_of() { if [ "$1" = nc ]; then echo "$nc_back"; else echo "$pt_back"; fi; }
# Blocks until nacrithfs has compressed everything written (nothing to do for bindfs).
settle() { if [ "$1" = nc ]; then "$bin" wait "$nc_mnt" --timeout 3600 >/dev/null; fi; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# --- measuring ----------------------------------------------------------------------
declare -A result
put() { result["$1.$2"]="$3"; } # MOUNT KEY VALUE
# MOUNT KEY COMMAND...: stores what COMMAND prints, stopping the run if it fails (a
# failure inside "$(...)" given as an argument would go unnoticed).
put_cmd() {
    local m=$1 k=$2 v
    shift 2
    v=$("$@") || die "$m: $k: $* failed"
    put "$m" "$k" "$v"
}
# Peak resident memory of the nacrithfs daemon since it started, in MiB ("–" for the
# passthrough, whose daemon is not ours to measure).
peak_mib() {
    if [ "$1" = nc ] && [ -n "$nc_pid" ]; then
        awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$nc_pid/status"
    else
        echo "–"
    fi
}
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# fio on one file through a mount; prints MiB/s. --invalidate=0: this script decides
# what is cached (fio would otherwise drop the file's pages before every job).
fio_mibs() { # FILE RW BS [fio args...]
    local file=$1 rw=$2 bs=$3
    shift 3
    fio --name=bench --filename="$file" --rw="$rw" --bs="$bs" --size="$size" --runtime="$runtime" \
        --ioengine=psync --fallocate=none --invalidate=0 --output-format=json --output="$work/fio.json" "$@" >/dev/null 2>"$work/fio.err" ||
        { cat "$work/fio.err" >&2; die "fio $rw $bs on $file failed"; }
    python3 - "$work/fio.json" "$rw" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["write" if "write" in sys.argv[2] else "read"]
print("%.1f" % (side["bw_bytes"] / 2**20))
EOF
}

# shellcheck disable=SC2086
fio_write() { fio_mibs "$@" --end_fsync=1 ${FIO_WRITE_ARGS---refill_buffers}; }

# Times one read of FILE to the end: prints "first_byte_secs total_secs".
read_timed() {
    local t0 t1
    t0=$EPOCHREALTIME
    {
        head -c1 >/dev/null
        t1=$(secs_since "$t0")
        cat >/dev/null
    } <"$1"
    echo "$t1 $(secs_since "$t0")"
}

suite() { # nc|pt
    local m mnt back
    m=$1 mnt=$(mnt_of "$1") back=$(back_of "$1")
    if [ -z "${SKIP_BINARY:-}" ]; then binary_steps "$m" "$mnt" "$back"; fi
    if [ -z "${SKIP_TEXT:-}" ]; then text_steps "$m" "$mnt" "$back"; fi
}

binary_steps() { # MOUNT MNT BACK
    local m=$1 mnt=$2 back=$3 t0
    echo "bench-fs: $m: writes" >&2
    put_cmd "$m" w1m fio_write "$mnt/seq1m" write 1M
    t0=$EPOCHREALTIME; settle "$m"; put "$m" settle_w1m "$(secs_since "$t0")"
    put "$m" rss_write "$(peak_mib "$m")"
    put_cmd "$m" stored_bin stat -c %s "$back/seq1m"
    put_cmd "$m" apparent_bin stat -c %s "$mnt/seq1m"
    put_cmd "$m" w4k fio_write "$mnt/seq4k" write 4k
    t0=$EPOCHREALTIME; settle "$m"; put "$m" settle_w4k "$(secs_since "$t0")"
    rm -f "$mnt/seq4k"
    put_cmd "$m" rw4k fio_write "$mnt/rand4k" randwrite 4k
    t0=$EPOCHREALTIME; settle "$m"; put "$m" settle_rw4k "$(secs_since "$t0")"
    rm -f "$mnt/rand4k"

    echo "bench-fs: $m: reads" >&2
    restart "$m"; drop_caches
    put_cmd "$m" r1m_cold fio_mibs "$mnt/seq1m" read 1M
    put_cmd "$m" r1m_warm fio_mibs "$mnt/seq1m" read 1M
    drop_caches
    put_cmd "$m" r1m_lru fio_mibs "$mnt/seq1m" read 1M
    put "$m" rss_read "$(peak_mib "$m")"
    restart "$m"; drop_caches
    put_cmd "$m" rr4k_cold fio_mibs "$mnt/seq1m" randread 4k
    put_cmd "$m" rr4k_warm fio_mibs "$mnt/seq1m" randread 4k
    rm -f "$mnt/seq1m"
}

text_steps() { # MOUNT MNT BACK
    local m=$1 mnt=$2 back=$3 t0 r
    echo "bench-fs: $m: text" >&2
    head -c "$text_bytes" "$text" >"$work/text.txt"
    t0=$EPOCHREALTIME
    cp "$work/text.txt" "$mnt/text.txt"
    settle "$m"
    put "$m" text_store "$(secs_since "$t0")"
    put_cmd "$m" stored_text stat -c %s "$back/text.txt"
    put_cmd "$m" apparent_text stat -c %s "$mnt/text.txt"
    restart "$m"; drop_caches
    r=$(read_timed "$mnt/text.txt") || die "$m: reading text.txt failed"
    put "$m" text_ttfb "${r% *}"
    put "$m" text_cold "${r#* }"
    r=$(read_timed "$mnt/text.txt") || die "$m: reading text.txt failed"
    put "$m" text_warm "${r#* }"
    drop_caches
    r=$(read_timed "$mnt/text.txt") || die "$m: reading text.txt failed"
    put "$m" text_lru "${r#* }"
    cmp -s "$work/text.txt" "$mnt/text.txt" || die "$m: text read back differs"

    # Changes to the compressed text (nacrithfs: one overlay record each, nothing
    # decoded), then the background compression that folds them into a new blob
    # (its unchanged chunks copied, not coded again).
    echo "bench-fs: $m: text changes" >&2
    head -c 4096 /dev/zero | tr '\0' x >"$work/patch"
    t0=$EPOCHREALTIME
    echo "a line appended to the compressed file" >>"$mnt/text.txt"
    put "$m" text_append "$(secs_since "$t0")"
    echo "a line appended to the compressed file" >>"$work/text.txt"
    t0=$EPOCHREALTIME
    dd if="$work/patch" of="$mnt/text.txt" bs=4096 seek=1 conv=notrunc status=none
    put "$m" text_overwrite "$(secs_since "$t0")"
    dd if="$work/patch" of="$work/text.txt" bs=4096 seek=1 conv=notrunc status=none
    cmp -s "$work/text.txt" "$mnt/text.txt" || die "$m: changed text reads back wrong"
    t0=$EPOCHREALTIME; settle "$m"; put "$m" text_resettle "$(secs_since "$t0")"
    cmp -s "$work/text.txt" "$mnt/text.txt" || die "$m: recompressed text reads back wrong"
}

start_nc
start_pt
suite nc
suite pt

# --- report -------------------------------------------------------------------------
row() { # LABEL KEY UNIT
    local a=${result[nc.$2]} b=${result[pt.$2]}
    awk -v l="$1" -v a="$a" -v b="$b" -v u="$3" 'BEGIN {
        r = (b > 0) ? sprintf("%.2f", a / b) : "–"
        printf "| %s | %s | %s | %s | %s |\n", l, u, a, b, r }'
}
row_nc() { # LABEL KEY UNIT: a step the passthrough does not have
    printf '| %s | %s | %s | – | – |\n' "$1" "$3" "${result[nc.$2]}"
}
{
    echo "Filesystem benchmark: fio $(fio --version | sed 's/^fio-//'), psync, file size $size (runtime cap ${runtime}s per job), write data options: ${FIO_WRITE_ARGS---refill_buffers}; passthrough: $(bindfs --version | head -1) ${BINDFS_ARGS--o big_writes}; text: first $text_bytes bytes of $(basename "$text")"
    echo
    echo "| test | unit | nacrithfs | passthrough (bindfs) | nacrithfs / passthrough |"
    echo "|---|---|---:|---:|---:|"
    if [ -z "${SKIP_BINARY:-}" ]; then
    row "sequential write, 1 MiB blocks (into staging)" w1m "MiB/s"
    row "sequential write, 4 KiB blocks (into staging)" w4k "MiB/s"
    row "random write, 4 KiB" rw4k "MiB/s"
    row_nc "background compression after the 1 MiB write" settle_w1m "s"
    row_nc "daemon peak RSS: mount, writes, their compression" rss_write "MiB"
    row "sequential read 1 MiB, cold (new mount, caches dropped)" r1m_cold "MiB/s"
    row "sequential read 1 MiB, warm (page cache)" r1m_warm "MiB/s"
    row "sequential read 1 MiB after drop_caches (nacrithfs: decoded-extent LRU)" r1m_lru "MiB/s"
    row_nc "daemon peak RSS: new mount, the three sequential reads" rss_read "MiB"
    row "random read 4 KiB, cold" rr4k_cold "MiB/s"
    row "random read 4 KiB, warm" rr4k_warm "MiB/s"
    fi
    if [ -z "${SKIP_TEXT:-}" ]; then
    row "text: copy in until compressed (cp + nacrithfs wait)" text_store "s"
    row "text: time to first byte, cold" text_ttfb "s"
    row "text: full read, cold (model decodes)" text_cold "s"
    row "text: full read, warm (page cache)" text_warm "s"
    row "text: full read after drop_caches (LRU)" text_lru "s"
    row "text: append a line to the compressed file" text_append "s"
    row "text: overwrite 4 KiB in its middle" text_overwrite "s"
    row_nc "text: background compression of the two changes" text_resettle "s"
    fi
    echo
    echo "| space | file size in the mount | bytes in nacrithfs backing | stored / size |"
    echo "|---|---:|---:|---:|"
    kinds=""
    [ -n "${SKIP_BINARY:-}" ] || kinds="bin"
    [ -n "${SKIP_TEXT:-}" ] || kinds="$kinds text"
    for k in $kinds; do
        a=${result[nc.apparent_$k]} s=${result[nc.stored_$k]}
        label=$([ $k = bin ] && echo "fio data (random)" || echo "English text")
        awk -v l="$label" -v a="$a" -v s="$s" 'BEGIN { printf "| %s | %.0f | %.0f | %.3f |\n", l, a, s, (a > 0) ? s / a : 0 }'
    done
} | tee "$out/fs.md"
{
    echo "mount,key,value"
    for k in "${!result[@]}"; do echo "${k%%.*},${k#*.},${result[$k]}"; done | sort
} >"$out/fs.csv"
echo "bench-fs: wrote $out/fs.md and $out/fs.csv" >&2
