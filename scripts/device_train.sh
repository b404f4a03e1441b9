#!/usr/bin/env bash
# One call on a lent GPU machine (issue 16): train a config for a bounded time, validate
# against the exact oracle, and bring the checkpoint back. Resumes exactly when the run
# directory was carried along (its last.safetensors holds weights, optimiser and RNG state).
#
#   run(command="bash scripts/device_train.sh gp2d_gpu 7", carry=["runs/gp2d_gpu"],
#       timeout_s=600)
#
# Arguments: CONFIG (bundled name or YAML; default gp2d_gpu), MINUTES of training (default 7),
# BATCHES of the evaluation (default in_domain=100,shifted=100; none: no evaluation).
# DEVICE=cpu for a dry run; INIT=<checkpoint or shipped model> starts a fresh run from it.
# Brings back under $OUT: last.safetensors, best.safetensors, log.jsonl and eval/eval.{json,md};
# to continue, copy them into runs/CONFIG/ here and carry that folder in the next call.
# The machine's own torch is used (nothing can be installed there): the script checks for
# what the package imports and stops with a message if something is missing.
set -euo pipefail
config=${1:-gp2d_gpu}
minutes=${2:-7}
batches=${3:-in_domain=100,shifted=100}
device=${DEVICE:-cuda}
run=runs/$(basename "$config" .yaml)
out=${OUT:-/tmp/device_train_out}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python - "$device" <<'PY' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "safetensors", "yaml", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"device_train.sh: missing on this machine: {', '.join(missing)}")
import torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("device_train.sh: no CUDA device here (DEVICE=cpu for a dry run)")
print(f"torch {torch.__version__}, device {sys.argv[1]}"
      + (f" ({torch.cuda.get_device_name()})" if sys.argv[1] == "cuda" else ""))
PY
mkdir -p "$out/eval"
if [ -f "$run/last.safetensors" ]; then
  python -m bsatnp train --config "$config" --resume "$run/last.safetensors" \
    --minutes "$minutes" --device "$device" --quiet
else
  python -m bsatnp train --config "$config" --out "$run" --minutes "$minutes" \
    --device "$device" --quiet ${INIT:+--init "$INIT"}
fi
if [ "$batches" != none ]; then
  python -m bsatnp evaluate --checkpoint "$run/last.safetensors" --n-batches "$batches" \
    --device "$device" --quiet --out "$out/eval"
fi
for f in last.safetensors best.safetensors log.jsonl; do
  if [ -f "$run/$f" ]; then cp "$run/$f" "$out/"; fi
done
echo "brought back: $(ls "$out" "$out/eval" | tr '\n' ' ')"
