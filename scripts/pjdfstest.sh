#!/usr/bin/env bash
# POSIX conformance: runs pjdfstest 0.2.2 (Rust edition) with tests/pjdfstest.toml twice,
# on a plain directory of the root file system (ext4 on Debian) and inside a live
# nacrithfs mount (real daemon, real model), then compares them case by case.
#
#   scripts/pjdfstest.sh            # needs root, /dev/fuse, pjdfstest, target/release/nacrithfs
#
# Passes when at least PJDFSTEST_MIN_PCT (default 95) % of the cases that pass on the
# plain directory also pass on nacrithfs. Prints both summaries, the percentage and every
# case that passes on ext4 but not on nacrithfs (their reasons: docs/RELIABILITY.md).
# Logs are kept in PJDFSTEST_OUT when set. Environment: NACRITHFS_BIN (the binary),
# PJDFSTEST (the runner), PJDFSTEST_WORK (where to make the directories, default /var/tmp).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${NACRITHFS_BIN:-$root/target/release/nacrithfs}"
conf="$root/tests/pjdfstest.toml"
min="${PJDFSTEST_MIN_PCT:-95}"
pjd="${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}"

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "must run as root (the permission cases switch users)"
[ -x "$pjd" ] || die "pjdfstest not found: cargo install pjdfstest --version 0.2.2"
[ -x "$bin" ] || die "$bin not found: cargo build --release"
[ -e /dev/fuse ] || die "/dev/fuse missing"

work="$(mktemp -d "${PJDFSTEST_WORK:-/var/tmp}/pjdfstest.XXXXXX")"
chmod 755 "$work" # the dummy users must be able to reach both test directories
daemon=""
other=""
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then
        fusermount3 -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
    fi
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
    if [ -n "${PJDFSTEST_OUT:-}" ]; then mkdir -p "$PJDFSTEST_OUT" && cp "$work"/*.log "$PJDFSTEST_OUT"/ 2>/dev/null || true; fi
    rm -rf "$work" "$other"
}
trap cleanup EXIT
mkdir -m 755 "$work/plain" "$work/backing" "$work/mnt"
# The EXDEV cases need a second file system: a tmpfs beside ext4, ext4 beside the mount.
other="$(mktemp -d /dev/shm/pjdfstest.XXXXXX)"
chmod 755 "$other"

run_suite() { # DIR LOG SECONDARY_FS
    local t0=$SECONDS
    NO_COLOR=1 "$pjd" -c "$conf" -p "$1" -s "$3" >"$2" 2>&1 || true
    echo "  $(grep -a 'Summary' "$2" | sed 's/\x1b\[[0-9;]*m//g') ($((SECONDS - t0)) s)"
}
# "name result" per case: ok, FAILED, skipped, "failed as expected", "PASSED UNEXPECTEDLY".
results() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '
        $NF == "ok" && NF == 2 { print $1, "ok" }
        $NF == "FAILED" && NF == 2 { print $1, "FAILED" }
        $NF == "skipped" && NF == 2 { print $1, "skipped" }
        / failed as expected$/ { print $1, "FAILED" }
        / PASSED UNEXPECTEDLY$/ { print $1, "ok" }' | sort -u
}

echo "pjdfstest $("$pjd" --version 2>/dev/null | awk '{print $2}'), config tests/pjdfstest.toml"
echo "plain directory ($(stat -f -c %T "$work/plain") on $(df --output=source "$work/plain" | tail -1)):"
run_suite "$work/plain" "$work/plain.log" "$other"

RUST_LOG=warn "$bin" mount --allow-other "$work/backing" "$work/mnt" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 600); do
    mountpoint -q "$work/mnt" && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; die "mount failed"; }
    sleep 0.1
done
mountpoint -q "$work/mnt" || die "mount not ready after 60 s"
echo "nacrithfs mount (--allow-other, default_permissions):"
run_suite "$work/mnt" "$work/nacrithfs.log" "$work/plain"
kill -TERM "$daemon"
wait "$daemon" || die "daemon exited with $? (log: $(tail -3 "$work/daemon.log"))"
daemon=""

results "$work/plain.log" >"$work/plain.res"
results "$work/nacrithfs.log" >"$work/nacrithfs.res"
total=$(wc -l <"$work/plain.res")
[ "$total" -gt 300 ] || die "only $total cases parsed from the plain run; see $work/plain.log"
join "$work/plain.res" "$work/nacrithfs.res" >"$work/both.res"
base=$(awk '$2 == "ok"' "$work/plain.res" | wc -l)
kept=$(awk '$2 == "ok" && $3 == "ok"' "$work/both.res" | wc -l)
pct=$(awk -v k="$kept" -v b="$base" 'BEGIN { printf "%.1f", b ? 100 * k / b : 0 }')
echo "cases: $total; pass on ext4: $base; of those pass on nacrithfs: $kept ($pct %, need $min %)"
lost=$(awk '$2 == "ok" && $3 != "ok" { print "  " $1 " (" $3 ")" }' "$work/both.res")
[ -z "$lost" ] || { echo "pass on ext4, not on nacrithfs:"; echo "$lost"; }
gained=$(awk '$2 != "ok" && $3 == "ok" { print "  " $1 " (" $2 " on ext4)" }' "$work/both.res")
[ -z "$gained" ] || { echo "pass on nacrithfs, not on ext4:"; echo "$gained"; }
if grep -qiE 'panicked|error' "$work/daemon.log"; then
    echo "daemon log:"; grep -iE 'panicked|error' "$work/daemon.log" | head -20
fi
awk -v p="$pct" -v m="$min" 'BEGIN { exit !(p + 0 >= m + 0) }' || { echo "pjdfstest: below $min %" >&2; exit 1; }
