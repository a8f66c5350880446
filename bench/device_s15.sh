#!/bin/bash
# The device calls of session 2026-11-27 (fifteenth). Usage on the GPU machine:
#   bash bench/device_s15.sh keep2   the tall-array GPU tests (the two-group forward cols_keep2_fwd included),
#                                    keep_diag with and without keep_seg on the tall shapes, compute-sanitizer on
#                                    bench/sanitize_ops.py (the keep kernels' gain prefetch, the two-group forward)
#   bash bench/device_s15.sh route   the dense route's GPU tests, bench/dense_route.py (fp16 and fp32 at N = 4096,
#                                    fp16 b = 8 / 16 at N = 1024)
#   bash bench/device_s15.sh host    bench/host_diag.py: host time a call, hidden synchronizations, cProfile
#   bash bench/device_s15.sh bench   bench/bsmm.py, compute-sanitizer on the dense route (sanitize_bsmm.py --route)
#   bash bench/device_s15.sh rnn     the RNN's tensor-core GPU tests, bench/rnn.py (the group-counter exchange)
#   bash bench/device_s15.sh final   the matmul GPU tests and bench/bsmm.py
#   bash bench/device_s15.sh tests   every GPU test and `python -m cusparseblocks check`
# Everything lands in one archive under $OUT.
. bench/device_env.sh
if [ "$1" == keep2 ]; then
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py -k keep \
    > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
  timeout 240 python bench/keep_diag.py --shapes ${KD_SHAPES:-131072x256,262144x128,65536x512,8192x4096} \
    --dtypes bfloat16,float16,float32 --settings "keep always,keep seg2" > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"
  grep -E "^\{" $L/keep_diag-$stamp.log | grep "fwd" | python3 -c "
import sys, ast
for l in sys.stdin:
    r = ast.literal_eval(l)
    print(r['dtype'].ljust(9), r['shape'].ljust(11), r['setting'].ljust(12), r['op'].ljust(11), r['plan'].ljust(22), '%.4f' % r['ms'], '%.1f' % r['%copy'])"
  sanitize_ops ${SAN_S:-150}  # (this run's 34 memcheck "errors": cuGetProcAddress API returns, no kernel error)
fi
if [ "$1" == route ]; then
  timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_dense_route.py \
    > $L/route-tests-$stamp.log 2>&1
  echo "route tests rc=$? $(el): $(tail -1 $L/route-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/route-tests-$stamp.log | head -8
  timeout 330 python bench/dense_route.py --dtypes float16,float32 > $L/dense_route-$stamp.log 2>&1
  echo "dense_route rc=$? $(el)"
  timeout 60 python bench/dense_route.py --dtypes float16 --blocks 8,16 --n 1024 --densities 0.05,0.1,0.2 \
    > $L/dense_route-n1024-$stamp.log 2>&1
  echo "dense_route n1024 rc=$? $(el)"; cp bench/results/dense_route-* $L/ 2>/dev/null
  grep -E "^\{" $L/dense_route-*.log | cut -d: -f2- | python3 -c "
import sys, ast
for l in sys.stdin:
    r = ast.literal_eval(l)
    print(r['dtype'][:4], r['b'], r['d'], r['N'], r['op'].ljust(5), '%.3f %.3f %.3f' % (r['sparse ms'], r['route ms'], r['cuBLAS ms']), '%.3f %.3f' % (r['sparse x'], r['route x']), r['winner'], '%.1e' % r['rel err'])"
fi
if [ "$1" == host ]; then  # hidden synchronizations and the host path of the helper ops (bench/host_diag.py)
  timeout 200 python bench/host_diag.py --rows 4096 --cols 4096 --dtype float16 --block 64 --density 0.05 \
    --only bsmm --profile > $L/host_diag-$stamp.log 2>&1; echo "host_diag rc=$? $(el)"; cat $L/host_diag-$stamp.log
fi
if [ "$1" == rnn ]; then  # the RNN exchange with group counters: its GPU tests, the headline and its variants
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_rnn.py -k "tc" \
    > $L/rnn-tests-$stamp.log 2>&1
  echo "rnn tests rc=$? $(el): $(tail -1 $L/rnn-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/rnn-tests-$stamp.log | head -8
  timeout 200 python bench/rnn.py > $L/rnn-$stamp.log 2>&1; echo "rnn bench rc=$? $(el)"
  cp bench/results/rnn-2026112[7-9]* $L/ 2>/dev/null
  grep -E "us_per_step|tc/|ours|cublas|cudnn" $L/rnn-$stamp.log | head -40; tail -25 $L/rnn-$stamp.log
fi
if [ "$1" == final ]; then  # the matmul GPU tests again (after the fix of 0545's 4 failures), then bench/bsmm.py
  timeout 250 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py \
    tests/test_dense_route.py > $L/matmul-tests-$stamp.log 2>&1
  echo "matmul tests rc=$? $(el): $(tail -1 $L/matmul-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/matmul-tests-$stamp.log | head -8
  timeout 300 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
  cp bench/results/bsmm-2026112[7-9]* $L/ 2>/dev/null
  grep -E "^ *cusparseblocks(\[kernels\])? +(fprop|bprop|updat)" $L/bsmm-$stamp.log | head -150
fi
if [ "$1" == tests ]; then gpu_suite 500; fi
if [ "$1" == bench ]; then  # bench/bsmm.py (the dense route's rows included) and its table
  timeout 400 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
  cp bench/results/bsmm-2026* $L/ 2>/dev/null
  grep -E "^ *cusparseblocks(\[kernels\])? +(fprop|bprop|updat)" $L/bsmm-$stamp.log | head -150
  for tool in memcheck racecheck; do  # the dense route's kernels (densify, gather_blocks)
    timeout 100 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_bsmm.py --route \
      > $L/sanitize_route-$tool-$stamp.log 2>&1
    echo "sanitize route $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_route-$tool-$stamp.log | tr '\n' ' ')"
  done
fi
cd $OUT && tar czf s15-$1-$stamp.tgz r && rm -rf r
