#!/usr/bin/env bash
# Run the benchmark suite on an accelerator (the `device` tool), writing JSON and a log to $OUT.
#   bash benchmarks/gpu_suite.sh            # paper-scale sizes, meant for a GPU (~8.5 min)
#   QUICK=1 bash benchmarks/gpu_suite.sh    # tiny sizes (runs on a CPU too, ~5 min on 2 cores)
# Steps run in order of importance, each under its own time limit, each writing its JSON as
# soon as it finishes, so a cut-off run still returns what it finished.
# Environment: JBLASE_SHARED_DATA points at the reference data when ../shared is not beside the
# checkout (the device copies only the repository).
set -uo pipefail
cd "$(dirname "$0")"
export JBLASE_BENCH_OUT="${OUT:-results}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$JBLASE_BENCH_OUT"
"${PYTHON:-python3}" -c "import jax, jblase; print('backend', jax.default_backend(), jax.devices(), jax.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
PY="${PYTHON:-python3}"
run() {
  local limit=$1; shift
  echo "== $(date +%T) $*"
  timeout "$limit" "$PY" "$@" || echo "!! $1 failed or timed out (rc=$?)"
}
if [ "${QUICK:-0}" = "1" ]; then
  run 120 throughput.py --quick --batches 1 8 --contenders default default_f32
  run 200 clone.py --quick --skip-grid
  run 120 inference.py --quick
  run 120 reconstruct.py --quick
else
  # Spectra per second at paper scale (128,723 lines, 8038-12849 A, R = 500,000).
  run 170 throughput.py --batches 1 32 256 1024 --contenders default_f32 default --repeats 3
  # Real PHOENIX spectrum per epoch, then 64 paper-scale spectra cloned in batches of 32.
  run 150 clone.py --quick --skip-grid --paper-grid 64 --paper-batch 32
  # Seconds per inference (paper protocol; the baseline generator runs on the host CPU).
  run 90 inference.py --quick
  # Ratios against the paper's design at 20,000 lines (baseline on the host CPU).
  run 100 reconstruct.py --lines 20000 --batches 1 60 --repeats 2 --serial-points 2 \
    --baseline-max-spectra 2 --budget-s 5
  # Spectra fitted per second by fit-many: 1 worker (one GPU), then one worker per GPU.
  NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
  run 200 survey.py --quick --workers 1 $([ "${NGPU:-0}" -gt 1 ] && echo "$NGPU")
fi
ls -l "$JBLASE_BENCH_OUT"
