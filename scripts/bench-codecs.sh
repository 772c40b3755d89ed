#!/usr/bin/env bash
# Compares nacrithfs with gzip -9, bzip2 -9, xz -9e and zstd -19 on the same files, in
# one run: size, bits per byte, compress/decompress speed (KB/s of original data) and
# peak RSS. Prints a Markdown table. Usage: scripts/bench-codecs.sh [FILES...]
# Env: NACRITHFS (binary, default target/release/nacrithfs), NACRITHFS_ARGS (extra
# compress flags, e.g. "--no-verify").
set -euo pipefail
bin="${NACRITHFS:-target/release/nacrithfs}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(../shared/corpus/sample_3k.txt ../shared/corpus/sample_50k.txt ../shared/corpus/sample_100k.txt)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# Runs a command, prints "seconds peak_rss_kib". Fast commands are repeated until at
# least half a second has passed, and the mean is reported.
measure() {
    /usr/bin/time -f "%e %M" -o "$tmp/time" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    read -r secs rss < "$tmp/time"
    if awk -v s="$secs" 'BEGIN { exit !(s < 0.5) }'; then
        local n=0 start end
        start=$(date +%s%N)
        while :; do
            "$@" >/dev/null 2>&1; n=$((n + 1)); end=$(date +%s%N)
            [ $((end - start)) -lt 500000000 ] || break
        done
        secs=$(awk -v ns=$((end - start)) -v n=$n 'BEGIN { printf "%.6f", ns / 1e9 / n }')
    fi
    echo "$secs $rss"
}
row() { # name file size csecs dsecs crss drss
    local n=$(stat -c %s "$2")
    awk -v name="$1" -v f="$(basename "$2")" -v n="$n" -v s="$3" -v c="$4" -v d="$5" -v cr="$6" -v dr="$7" 'BEGIN {
        cs = (c > 0) ? n / 1024 / c : 0; ds = (d > 0) ? n / 1024 / d : 0;
        printf "| %s | %s | %d | %d | %.3f | %.2f | %.2f | %.2f | %d / %d |\n", f, name, n, s, s * 8 / n, n / s, cs, ds, cr / 1024, dr / 1024 }'
}

echo "| file | compressor | bytes | compressed | bits/byte | ratio | compress KB/s | decompress KB/s | peak RSS MiB (c / d) |"
echo "|---|---|---|---|---|---|---|---|---|"
for f in "${files[@]}"; do
    for spec in "gzip -9" "bzip2 -9" "xz -9e" "zstd -19 -q"; do
        set -- $spec
        read cs crss < <(measure sh -c "$spec -c '$f' > '$tmp/c'")
        read ds drss < <(measure sh -c "$1 -d -c '$tmp/c' > '$tmp/d'")
        cmp -s "$f" "$tmp/d" || { echo "$spec: round trip failed on $f" >&2; exit 1; }
        row "${spec% -q}" "$f" "$(stat -c %s "$tmp/c")" "$cs" "$ds" "$crss" "$drss"
    done
    read cs crss < <(measure "$bin" compress "$f" -o "$tmp/n.nc06" -f ${NACRITHFS_ARGS:-})
    read ds drss < <(measure "$bin" decompress "$tmp/n.nc06" -o "$tmp/n.out" -f)
    cmp -s "$f" "$tmp/n.out" || { echo "nacrithfs: round trip failed on $f" >&2; exit 1; }
    row "nacrithfs ${NACRITHFS_ARGS:-}" "$f" "$(stat -c %s "$tmp/n.nc06")" "$cs" "$ds" "$crss" "$drss"
done
