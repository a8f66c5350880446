#!/bin/bash
# One device call that checks and times the helpers' branches merged on integ (session 2026-11-26).
# Usage on the GPU machine: bash bench/device_integ.sh PART...   (parts: cols small fp32 rows ew bsmm)
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
for part in "$@"; do
  case $part in
  cols)
    python bench/ew.py --warm-only 2>&1 | tail -1
    timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py > $L/cols-tests.log 2>&1
    echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests.log | head -8
    timeout 100 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops.py -k norm > $L/ops-norm-tests.log 2>&1
    echo "ops norm tests rc=$? $(el): $(tail -1 $L/ops-norm-tests.log)"; grep -E '^(FAILED|ERROR)' $L/ops-norm-tests.log | head -8
    timeout 150 python bench/ew.py --dtypes bfloat16,float32 --only "layer_norm fwd ax0,batch_norm fwd ax1,batch_norm bwd ax1,weight_norm unit" --variants > $L/cols-ew.log 2>&1
    echo "cols ew rc=$? $(el)";;
  small)
    timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "small or fprop_bprop_updat or accumulate_and_fp32 or single_block" > $L/small-tests.log 2>&1
    echo "small tests rc=$? $(el): $(tail -1 $L/small-tests.log)"; grep -E '^(FAILED|ERROR)' $L/small-tests.log | head -8
    timeout 150 python bench/bsmm.py --small --no-torch > $L/small-bench.log 2>&1
    echo "small bench rc=$? $(el)"
    if [ -f bench/profile_small.py ]; then
      timeout 90 ncu --kernel-name regex:xw_small --launch-skip 2 --launch-count 1 --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_op_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active python bench/profile_small.py 0.5 float16 > $L/small-ncu.log 2>&1
      echo "small ncu rc=$? $(el)"
    fi;;
  fp32)
    timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "simt or float32 or ffma" > $L/fp32-tests.log 2>&1
    echo "fp32 tests rc=$? $(el): $(tail -1 $L/fp32-tests.log)"; grep -E '^(FAILED|ERROR)' $L/fp32-tests.log | head -8
    timeout 200 python bench/bsmm.py --dtype float32 --n 4096 > $L/fp32-bench.log 2>&1
    echo "fp32 bench rc=$? $(el)";;
  rows)
    python bench/ew.py --warm-only 2>&1 | tail -1
    timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops.py > $L/rows-tests.log 2>&1
    echo "ops tests rc=$? $(el): $(tail -1 $L/rows-tests.log)"; grep -E '^(FAILED|ERROR)' $L/rows-tests.log | head -8
    timeout 150 python bench/ew.py ${ROWS_ARGS:---variants} > $L/rows-ew.log 2>&1
    echo "rows ew rc=$? $(el)";;
  esac
done
cp $(ls -t bench/results/*.json bench/results/*.cmd 2>/dev/null | head -8) $L/ 2>/dev/null
stamp=$(date -u +%Y%m%d-%H%M)
tar czf $OUT/integ-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el): $OUT/integ-$stamp.tgz"
