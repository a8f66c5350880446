#!/bin/bash
# The closing device calls of session 2026-11-26 (sixth). Usage on the GPU machine:
#   bash bench/device_s6.sh fuzz    the random-case tests (tests/test_*_fuzz.py: matmul, norms, conv, RNN)
#   bash bench/device_s6.sh tests   every GPU test and `python -m cusparseblocks check`
# (The L2-staged column-statistics runs of this session used the version of this script on branch wip-l2cols.)
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
stamp=$(date -u +%Y%m%d-%H%M)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python bench/ew.py --warm-only 2>&1 | tail -1
if [ "$1" = fuzz ]; then
  timeout 500 python -m pytest -m gpu -q -n 8 -p no:cacheprovider -rfE tests/test_matmul_fuzz.py tests/test_ops_fuzz.py \
    tests/test_conv_fuzz.py tests/test_rnn_fuzz.py > $L/fuzz-$stamp.log 2>&1
  echo "fuzz rc=$? $(el): $(tail -1 $L/fuzz-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/fuzz-$stamp.log | head -8
else
  timeout ${TEST_S:-400} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/ > $L/all-tests-$stamp.log 2>&1
  echo "all tests rc=$? $(el): $(tail -1 $L/all-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/all-tests-$stamp.log | head -8
  grep -E "^SKIPPED" $L/all-tests-$stamp.log | head -6
  timeout 60 python -m cusparseblocks check > $L/check-$stamp.log 2>&1
  echo "check rc=$? ($(el)): $(tail -2 $L/check-$stamp.log | tr '\n' ' ')"
fi
tar czf $OUT/s6-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
