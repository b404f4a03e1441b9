#!/usr/bin/env bash
# Fresh machine → venv with everything → the end-to-end demo (outputs in ./outputs/demo).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
.venv/bin/bsatnp demo "$@"
