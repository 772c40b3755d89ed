#!/bin/bash
# Pack SRC into DEST with a job array, merge the manifests when every task has
# succeeded, then verify. Rerunning this script after a failure finishes the job:
# every shard skips the files it already packed.
set -euo pipefail
SRC=${1:?usage: submit.sh SRC DEST}
DEST=${2:?usage: submit.sh SRC DEST}
here=$(dirname "$0")
pack=$(sbatch --parsable "$here/pack.sbatch" "$SRC" "$DEST")
merge=$(sbatch --parsable --dependency=afterok:"$pack" "$here/merge.sbatch" "$DEST")
verify=$(sbatch --parsable --dependency=afterok:"$merge" "$here/verify.sbatch" "$DEST")
echo "pack array $pack, merge $merge, verify array $verify"
