#!/bin/bash
# The device calls of session 2026-11-27 (nineteenth). Usage on the GPU machine:
#   bash bench/device_s19.sh start   every conv GPU test, then bench/conv.py at batch 64 on $CONV_VARIANTS
#                                    (default: wst4:256 and halo:256x4 beside the default)
#   bash bench/device_s19.sh wtp     the conv GPU tests -k $WTP_K (default "wtp"), then bench/conv.py on
#                                    $CONV_VARIANTS (default: wst4:256 and wtp)
#   bash bench/device_s19.sh final   every conv GPU test, the whole bench/conv.py, compute-sanitizer memcheck and
#                                    racecheck on bench/sanitize_conv.py
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
if [ "$1" == final ]; then
  conv_tests 200
  conv_bench "" 200
  for tool in memcheck racecheck; do
    timeout 130 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
fi
cd $OUT && tar czf s19-$1-$stamp.tgz r && rm -rf r
