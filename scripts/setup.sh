#!/usr/bin/env bash
# One-time set-up on Debian 12: system packages, then the default model.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install-deps.sh"
"$here/fetch-model.sh" >/dev/null
