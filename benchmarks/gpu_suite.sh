#!/usr/bin/env bash
# Run the benchmark suite on an accelerator (the `device` tool), writing JSON to $OUT.
#   bash benchmarks/gpu_suite.sh            # larger sizes, meant for a GPU session
#   QUICK=1 bash benchmarks/gpu_suite.sh    # the --quick sizes (runs on a CPU too)
# Each step has its own time limit so the whole suite stays inside about 8 minutes.
set -uo pipefail
cd "$(dirname "$0")"
export JBLASE_BENCH_OUT="${OUT:-results}"
export PYTHONUNBUFFERED=1
mkdir -p "$JBLASE_BENCH_OUT"
python -c "import jax; print('backend', jax.default_backend(), jax.devices())"
if [ "${QUICK:-0}" = "1" ]; then
  args=(--quick)
  recon=(--quick)
else
  args=()
  recon=(--lines 20000 --batches 1 10 30 60 300)
fi
run() { local limit=$1; shift; echo "== $*"; timeout "$limit" python "$@" || echo "!! $1 failed or timed out (rc=$?)"; }
run 150 reconstruct.py "${recon[@]}"
run 120 clone.py "${args[@]}"
run 90 inference.py --quick
run 60 scaling.py --quick
run 30 storage.py --quick
ls -l "$JBLASE_BENCH_OUT"
