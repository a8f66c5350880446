#!/bin/bash
# The device calls of session 2026-11-27 (nineteenth). Usage on the GPU machine:
#   bash bench/device_s19.sh start   every conv GPU test, then bench/conv.py at batch 64 on $CONV_VARIANTS
#                                    (default: wst4:256 and halo:256x4 beside the default)
#   bash bench/device_s19.sh wtp     the conv GPU tests -k $WTP_K (default "wtp"), then bench/conv.py on
#                                    $CONV_VARIANTS (default: wst4:256 and wtp)
#   bash bench/device_s19.sh ncu     Nsight Compute (--set full) on the random d = $NCU_D (0.5) fprop of bench/conv.py's
#                                    shape, variants $NCU_V (2 launches each), and the metric table
#   bash bench/device_s19.sh src     ncu SourceCounters (per-SASS-instruction stall samples) of one launch per $SRC_V variant,
#                                    then bench/conv.py on $CONV_VARIANTS (if set)
#   bash bench/device_s19.sh final   every conv GPU test, the torch adapter's conv GPU tests, `check`, the whole
#                                    bench/conv.py, compute-sanitizer memcheck and racecheck on bench/sanitize_conv.py
# Everything lands in one archive under $OUT.
. bench/device_env.sh
conv_tests() {
  timeout ${1:-200} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_conv.py $2 > $L/conv-tests-$stamp.log 2>&1
  echo "conv tests rc=$? $(el): $(tail -1 $L/conv-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/conv-tests-$stamp.log | head -8
}
conv_bench() {
  CONV_VARIANTS=$1 timeout ${2:-200} python bench/conv.py --batch 64 $CONV_ARGS > $L/conv-$stamp.log 2>&1
  echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026112[7-9]* $L/ 2>/dev/null
  grep -E "^64 " $L/conv-$stamp.log | head -40; tail -8 $L/conv-$stamp.log
}
if [ "$1" == start ]; then
  conv_tests 200
  conv_bench ${CONV_VARIANTS-wst4:256,halo:256x4}
fi
if [ "$1" == wtp ]; then
  conv_tests 200 "-k ${WTP_K:-wtp}"
  conv_bench ${CONV_VARIANTS-wst4:256,wtp}
fi
if [ "$1" == ncu ]; then
  vs=${NCU_V:-wst4:256 wtp}; n=$((2 * $(echo $vs | wc -w)))
  timeout 300 ncu --kernel-name regex:conv_fprop_ --launch-count $n --set full -f -o $L/ncu-conv \
    python bench/profile_conv.py d=${NCU_D:-0.5} $vs > $L/ncu-conv-$stamp.log 2>&1; echo "ncu rc=$? $(el)"
  ncu --import $L/ncu-conv.ncu-rep --page raw --csv > $L/ncu-conv-raw-$stamp.csv 2>&1
  ncu --import $L/ncu-conv.ncu-rep --page details > $L/ncu-conv-details-$stamp.txt 2>&1; rm -f $L/ncu-conv.ncu-rep
  python bench/profile_conv.py --table $L/ncu-conv-raw-$stamp.csv
fi
if [ "$1" == src ]; then
  for v in ${SRC_V:-wtp}; do
    n=$(echo $v | tr ':' '_')
    timeout 200 ncu --kernel-name regex:conv_fprop_ --launch-skip 1 --launch-count 1 --section SourceCounters \
      --section WarpStateStats --import-source no -f -o $L/src-$n python bench/profile_conv.py d=${NCU_D:-0.5} $v \
      > $L/src-$n-$stamp.log 2>&1; echo "ncu src $v rc=$? $(el)"
    ncu -i $L/src-$n.ncu-rep --page source --csv --print-source sass > $L/src-$n-sass-$stamp.csv 2>&1
    rm -f $L/src-$n.ncu-rep; wc -l $L/src-$n-*-$stamp.csv
  done
  if [ -n "$CONV_VARIANTS" ]; then conv_bench $CONV_VARIANTS; fi
fi
if [ "$1" == final ]; then
  conv_tests 200
  timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_adapters_torch.py -k "conv or Conv" \
    > $L/adapters-conv-tests-$stamp.log 2>&1
  echo "adapter conv tests rc=$? $(el): $(tail -1 $L/adapters-conv-tests-$stamp.log)"
  timeout 60 python -m cusparseblocks check > $L/check-$stamp.log 2>&1
  echo "check rc=$? ($(el)): $(tail -2 $L/check-$stamp.log | tr '\n' ' ')"
  conv_bench "" 200
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
fi
cd $OUT && tar czf s19-$1-$stamp.tgz r && rm -rf r
