#!/usr/bin/env bash
# Fresh machine → venv with everything → lint + full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
