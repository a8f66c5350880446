#!/bin/bash
# The device calls of session 2026-11-27 (twelfth): column groups for tall arrays. Usage on the GPU machine:
#   bash bench/device_s12.sh groups   the column-statistics GPU tests, then bench/ew.py on tall arrays with
#                                     and without column groups (--variants, group_tall=False) in one run
#   bash bench/device_s12.sh cmp      the column-statistics GPU tests; the column ops at [8192, 4096] with the
#                                     old code and this, twice; compute-sanitizer on bench/sanitize_ops.py
#                                     (the old code: `git archive REV kernels cusparseblocks bench -o
#                                     req_old.tar` in the checkout before the call, untracked, not committed)
#   bash bench/device_s12.sh tests    every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s12.sh bench    bench/ew.py (every op), the tall shapes, compute-sanitizer on
#                                     bench/sanitize_ops.py
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
touch $L/.start
OPS="layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd"
tall() {  # $1: extra ew.py arguments
  for shape in "16384 2048" "32768 1024" "65536 512" "131072 256"; do
    read -r rows cols <<< "$shape"
    timeout 150 python bench/ew.py --rows $rows --cols $cols --only "$OPS" $1 > $L/ew-tall-$rows-$stamp.log 2>&1
    echo "ew $rows x $cols rc=$? $(el)"
  done
}
if [ "$1" == groups ]; then
  timeout 240 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
  tall "--variants --variant group_tall"
fi
# compute-sanitizer without the host API errors cuda-python's import makes (cuGetProcAddress probes: 34 of them)
sanitize_cols() {
  for tool in memcheck racecheck; do
    timeout $1 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_ops.py \
      > $L/sanitize_ops-$tool-$stamp.log 2>&1
    echo "sanitize_ops $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $L/sanitize_ops-$tool-$stamp.log | tail -1)"
  done
}
if [ "$1" == cmp ]; then  # the column ops at [8192, 4096], the code of req_old.tar (in req_old/) and this, twice
  rm -rf req_old && mkdir req_old && tar xf req_old.tar -C req_old
  (cd req_old && CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc-old python bench/ew.py --warm-only | tail -1)
  timeout 240 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
  for i in 1 2; do
    (cd req_old && CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc-old timeout 100 python bench/ew.py --only "$OPS" > $L/ew-old-$i.log 2>&1
     echo "old rc=$? $(el)"; find bench/results -newer $L/.start -name "ew-*.json" -exec cp {} $L/old-$i.json \; -delete)
    timeout 100 python bench/ew.py --only "$OPS" > $L/ew-new-$i.log 2>&1; echo "new rc=$? $(el)"
  done
  sanitize_cols 150
fi
if [ "$1" == tests ]; then gpu_suite 480; fi
if [ "$1" == bench ]; then
  python bench/ew.py > $L/ew-$stamp.log 2>&1; echo "ew rc=$? $(el)"
  tall ""
  sanitize_cols 200
fi
find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
tar czf $OUT/s12-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
