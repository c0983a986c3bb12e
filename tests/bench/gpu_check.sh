#!/usr/bin/env bash
# GPU variant of the benchmarks at MAFW shapes with random weights, as one prepared call for a session that
# has a GPU machine (not run in CPU-only sessions):
#   bench_extract --mafw-shapes (32x224^2 clips -> swin3d_b + ResNet50-ER + ANFL: clips/s, peak GPU memory)
#   bench_train   --mafw-shapes --batch 32 (784x1024 tokens, 12 x 768, bf16 autocast: steps/s, peak GPU memory)
#   bench_decode  --device cuda (prefix cache vs none, identical captions)
# through the same aggregator as `make bench`, so the figures land in one table:
#   bench/results_gpu.md and bench/results_gpu.json (or under $OUT when set, e.g. the device machine's $OUT).
# Usage: bash tests/bench/gpu_check.sh [extra args for `python -m tests.bench`, e.g. --budget 300]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-bench}
echo "== $(date -Is) $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF'
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device visible to torch; nothing to measure")
print("device:", torch.cuda.get_device_name(0), f"bf16: {torch.cuda.is_bf16_supported()}")
PYEOF
if [ ! -d ../shared/data/mafw_samples ]; then
    echo "note: ../shared/data/mafw_samples is absent here: the extraction row will be an error row" >&2
fi
# ~6 minutes in all, so one call fits a 15-minute device lease with room to rerun once.
"$PY" -m tests.bench --gpu --threads 0 --budget 360 --out "$DEST" "$@"
