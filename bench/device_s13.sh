#!/bin/bash
# The device calls of session 2026-11-27 (thirteenth): the tall-array kernels (cols_keep_*). Usage on the GPU:
#   bash bench/device_s13.sh keep    the column-statistics GPU tests, then bench/ew.py on tall arrays and at
#                                    [8192, 4096] with the keep variants (never / always) in the same run
#   bash bench/device_s13.sh diag    the tall-array GPU tests, bench/keep_diag.py (graph times per LAUNCH
#                                    setting), ncu's DRAM bytes and L2 hit rate of the cols_keep kernels
#   bash bench/device_s13.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s13.sh bench   the column-statistics GPU tests, compute-sanitizer on bench/sanitize_ops.py,
#                                    bench/ew.py (every op), the
#                                    tall shapes, bench/keep_diag.py (the default against keep never)
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
echo "warm $(el)"
touch $L/.start
OPS="layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd"
SHAPES=${SHAPES:-"16384 2048|32768 1024|65536 512|131072 256|262144 128"}
tall() {  # $1: extra ew.py arguments
  IFS='|' read -ra list <<< "$SHAPES"
  for shape in "${list[@]}"; do
    read -r rows cols <<< "$shape"
    timeout 150 python bench/ew.py --rows $rows --cols $cols --only "$OPS" $1 > $L/ew-tall-$rows-$stamp.log 2>&1
    echo "ew $rows x $cols rc=$? $(el)"
  done
}
sanitize_cols() {  # without the host API errors of cuda-python's import (cuGetProcAddress probes)
  for tool in memcheck racecheck; do
    timeout $1 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_ops.py \
      > $L/sanitize_ops-$tool-$stamp.log 2>&1
    echo "sanitize_ops $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $L/sanitize_ops-$tool-$stamp.log | tail -1)"
  done
}
if [ "$1" == keep ]; then
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
  tall "--variants --variant keep"
  timeout 150 python bench/ew.py --only "$OPS" --variants --variant keep > $L/ew-wide-$stamp.log 2>&1
  echo "ew 8192 x 4096 rc=$? $(el)"
fi
if [ "$1" == diag ]; then
  timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py -k keep > $L/keep-tests-$stamp.log 2>&1
  echo "keep tests rc=$? $(el): $(tail -1 $L/keep-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/keep-tests-$stamp.log | head -8
  timeout 300 python bench/keep_diag.py > $L/keep_diag-$stamp.log 2>&1; echo "keep_diag rc=$? $(el)"
  M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum
  timeout 200 ncu --kernel-name regex:cols_keep --metrics $M python bench/keep_diag.py --ncu \
    --shapes 65536x512,131072x256 --dtypes bfloat16 --settings "keep always,keep no hints" > $L/ncu-keep-$stamp.log 2>&1
  echo "ncu rc=$? $(el)"
fi
if [ "$1" == tests ]; then gpu_suite 500; fi
if [ "$1" == bench ]; then
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
  sanitize_cols 120
  python bench/ew.py > $L/ew-$stamp.log 2>&1; echo "ew rc=$? $(el)"
  tall ""
  timeout 150 python bench/keep_diag.py --settings "default,keep never" > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"
fi
find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
tar czf $OUT/s13-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
