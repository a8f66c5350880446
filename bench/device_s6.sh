#!/bin/bash
# The closing device calls of session 2026-11-26 (sixth). Usage on the GPU machine:
#   bash bench/device_s6.sh fuzz    the random-case tests (tests/test_*_fuzz.py: matmul, norms, conv, RNN)
#   bash bench/device_s6.sh tests   every GPU test and `python -m cusparseblocks check`
# (The L2-staged column-statistics runs of this session used the version of this script on branch wip-l2cols.)
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
if [ "$1" = fuzz ]; then
  timeout 500 python -m pytest -m gpu -q -n 8 -p no:cacheprovider -rfE tests/test_matmul_fuzz.py tests/test_ops_fuzz.py \
    tests/test_conv_fuzz.py tests/test_rnn_fuzz.py > $L/fuzz-$stamp.log 2>&1
  echo "fuzz rc=$? $(el): $(tail -1 $L/fuzz-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/fuzz-$stamp.log | head -8
else
  gpu_suite 400
fi
tar czf $OUT/s6-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
