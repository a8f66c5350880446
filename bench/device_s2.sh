#!/bin/bash
# One device call that checks and times the branches merged on integ (session 2026-11-26, second).
# Usage on the GPU machine: bash bench/device_s2.sh PART...
#   parts: cols conv fp32 small pers probe tests sanit bsmm ew rnn
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
stamp=$(date -u +%Y%m%d-%H%M)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
tests() {  # name, timeout, pytest args...
  local name=$1 t=$2; shift 2
  timeout $t python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE "$@" > $L/$name-tests.log 2>&1
  echo "$name tests rc=$? $(el): $(tail -1 $L/$name-tests.log)"; grep -E '^(FAILED|ERROR)' $L/$name-tests.log | head -8
}
for part in "$@"; do
  case $part in
  cols)
    python bench/ew.py --warm-only 2>&1 | tail -1
    tests cols 200 tests/test_ops_cols.py
    tests ops-norm 120 tests/test_ops.py -k norm
    timeout 180 python bench/ew.py --dtypes bfloat16,float32 --only "layer_norm fwd ax0,batch_norm fwd ax1,batch_norm bwd ax1,weight_norm unit,layer_norm bwd ax0" --variants > $L/cols-ew.log 2>&1
    echo "cols ew rc=$? $(el)";;
  conv)
    tests conv 240 tests/test_conv.py
    timeout 200 python bench/conv.py --batch 64 --batch 8 > $L/conv-bench.log 2>&1
    echo "conv bench rc=$? $(el)";;
  fp32)
    tests fp32 200 tests/test_matmul_gpu.py -k "simt or float32 or ffma"
    timeout 200 python bench/bsmm.py --dtype float32 --n 4096 --no-torch > $L/fp32-bench.log 2>&1
    echo "fp32 bench rc=$? $(el)";;
  small)
    tests small 150 tests/test_matmul_gpu.py -k small
    timeout 150 python bench/bsmm.py --small --no-torch --op fprop > $L/small-bench.log 2>&1
    echo "small bench rc=$? $(el)";;
  probe)
    timeout 120 python bench/stream_probe.py > $L/probe.log 2>&1; echo "probe rc=$? $(el)";;
  pers)
    tests pers 240 tests/test_matmul_gpu.py -k "persistent or wgmma or gmma"
    for tool in racecheck memcheck; do
      timeout 100 compute-sanitizer --tool $tool python bench/sanitize_bsmm.py --pers > $L/pers-$tool.log 2>&1
      echo "pers $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $L/pers-$tool.log | tr '\n' ' ')"
    done
    timeout 200 python bench/bsmm.py --dtype float16,bfloat16 --n 4096 --op fprop,bprop --no-torch > $L/pers-bench.log 2>&1
    echo "pers bench rc=$? $(el)";;
  pers2)
    tests pers2 150 tests/test_matmul_gpu.py -k "persistent or default_and_fallbacks"
    timeout 150 python bench/bsmm.py --dtype float16 --n 4096 --op fprop,bprop --no-torch > $L/pers2-bench.log 2>&1
    echo "pers2 bench rc=$? $(el)";;
  small2)
    tests small2 120 tests/test_matmul_gpu.py -k "small_batch_ring or tile_variants"
    timeout 120 python bench/bsmm.py --small --no-torch --op fprop --dtype float16 > $L/small2-bench.log 2>&1
    echo "small2 bench rc=$? $(el)";;
  fp32b)
    tests fp32b 150 tests/test_matmul_gpu.py -k "simt or float32 or ffma"
    timeout 150 python bench/bsmm.py --dtype float32 --n 4096 --op fprop,bprop --no-torch > $L/fp32b-bench.log 2>&1
    echo "fp32b bench rc=$? $(el)"
    for op in fprop updat; do
      timeout 60 ncu --kernel-name regex:"xw_ffma|updat_ffma" --launch-skip 2 --launch-count 1 --metrics smsp__inst_executed_op_shared_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio,smsp__average_warp_latency_issue_stalled_barrier.ratio,smsp__average_warp_latency_issue_stalled_short_scoreboard.ratio,smsp__average_warp_latency_issue_stalled_mio_throttle.ratio,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,lts__t_sectors_srcunit_tex_op_read.sum,dram__bytes_read.sum python bench/profile_ffma.py $op 0.5 > $L/fp32b-ncu-$op.log 2>&1
    done; echo "fp32b ncu $(el)";;
  tests)
    python bench/ew.py --warm-only 2>&1 | tail -1
    tests all ${TEST_S:-420} tests/
    grep -E "^SKIPPED" $L/all-tests.log | head -10
    timeout 90 python -m cusparseblocks check > $L/check.log 2>&1
    echo "check rc=$? ($(el)): $(tail -2 $L/check.log | tr '\n' ' ')";;
  sanit)
    for tool in memcheck racecheck; do
      for s in sanitize_bsmm sanitize_ops; do
        timeout 150 compute-sanitizer --tool $tool python bench/$s.py > $L/$s-$tool-$stamp.log 2>&1
        echo "$s $tool rc=$? ($(el)): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|every result' $L/$s-$tool-$stamp.log | tr '\n' ' ')"
      done
    done;;
  bsmm)
    timeout 330 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? ($(el))"
    timeout 150 python bench/bsmm.py --small > $L/bsmm-small-$stamp.log 2>&1; echo "bsmm small rc=$? ($(el))";;
  ew)
    timeout 150 python bench/ew.py --reps 20 > $L/ew-$stamp.log 2>&1; echo "ew rc=$? ($(el))";;
  rnn)
    timeout 200 python bench/rnn.py > $L/rnn-$stamp.log 2>&1; echo "rnn rc=$? ($(el))";;
  esac
done
cp $(ls -t bench/results/*.json bench/results/*.cmd bench/results/*.png 2>/dev/null | head -12) $L/ 2>/dev/null
tar czf $OUT/s2-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el): s2-$stamp.tgz"
