#!/usr/bin/env bash
# The GPU check in one call, self-contained (the device machine has this repository and the .venv that
# `make venv` builds there, nothing else: no shared data folder, no weights, no datasets):
#   1. python -m tests.bench.gpu_check: the GPU's measured bf16 matmul rate; extraction clips/s as `ecpa extract`
#      runs it, at MAFW shapes on demo clips generated on the spot (random weights), with peak GPU memory and
#      where the time goes; the stage-two training step at MAFW shapes in bf16: steps/s, peak GPU memory, FLOPs
#      per step and utilisation against the matmul rate. One `GPU_CHECK <kind> key=value ...` line per figure,
#      and $OUT/gpu_check.json.  (at most CHECK_S seconds, default 270)
#   2. python -m tests.bench --gpu (the GPU rows of the benchmark table: training and decoding at MAFW shapes)
#      in the time left (BENCH_S seconds, default 170), into $OUT/results_gpu.{md,json}.
# Both together stay under 8 minutes.
# Usage: bash tests/bench/gpu_check.sh            on the GPU machine ($OUT: where the files go; default bench/)
#        bash tests/bench/gpu_check.sh --tiny     the same check on the CPU with tiny shapes (the test suite's run)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-bench}
mkdir -p "$DEST"
echo "== $(date -Is) $(hostname) $(nproc) cores"
if [ "${1:-}" = "--tiny" ]; then
    shift
    exec "$PY" -m tests.bench.gpu_check --tiny --out "$DEST" "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}')"
rc=0
timeout --signal=KILL "${CHECK_S:-270}" "$PY" -m tests.bench.gpu_check --out "$DEST" "$@" || { rc=$?; echo "gpu_check: exit $rc" >&2; }
# the extraction row of the table is step 1's figure: skip its older MAFW-samples variant
"$PY" -m tests.bench --gpu --threads 0 --skip extract_mafw --budget "${BENCH_S:-170}" --out "$DEST" || { b=$?; [ "$rc" -ne 0 ] || rc=$b; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
exit $rc
