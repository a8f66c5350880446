#!/bin/bash
# The device calls of session 2026-11-27 (eighteenth). Usage on the GPU machine:
#   bash bench/device_s18.sh wss     the conv GPU tests of conv_fprop_wss (-k $WSS_K, default "wss"), then
#                                    bench/conv.py at batch 64 on $CONV_VARIANTS (default: the wst default and
#                                    wss; empty: every variant)
#   bash bench/device_s18.sh conv    every conv GPU test, compute-sanitizer on bench/sanitize_conv.py, the
#                                    whole bench/conv.py (env CONV_SAN: the sanitizer tools)
#   bash bench/device_s18.sh tests   every GPU test and `python -m cusparseblocks check` ($TEST_S seconds)
#   bash bench/device_s18.sh final   every conv GPU test, the whole bench/conv.py, bench/gmma_n_probe.py, then
#                                    compute-sanitizer memcheck and racecheck on bench/sanitize_conv.py
# Everything lands in one archive under $OUT.
. bench/device_env.sh
if [ "$1" == wss ]; then
  timeout ${WSS_T:-200} python -m pytest -m gpu -q -n 8 -p no:cacheprovider -rfE tests/test_conv.py -k "${WSS_K:-wss}" \
    > $L/wss-tests-$stamp.log 2>&1
  echo "wss tests rc=$? $(el): $(tail -1 $L/wss-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/wss-tests-$stamp.log | head -8
  CONV_VARIANTS=${CONV_VARIANTS-wst4:256,wss,wss:128,wss:256:run1} timeout 300 python bench/conv.py --batch 64 \
    $CONV_ARGS > $L/conv-$stamp.log 2>&1
  echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026112[7-9]* $L/ 2>/dev/null
  grep -E "^64 .*(wss|wst4)" $L/conv-$stamp.log | head -24; tail -7 $L/conv-$stamp.log
fi
if [ "$1" == conv ]; then
  timeout 300 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_conv.py > $L/conv-tests-$stamp.log 2>&1
  echo "conv tests rc=$? $(el): $(tail -1 $L/conv-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/conv-tests-$stamp.log | head -8
  for tool in ${CONV_SAN-memcheck racecheck}; do
    timeout 150 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
  CONV_VARIANTS= timeout 300 python bench/conv.py --batch 64 $CONV_ARGS > $L/conv-$stamp.log 2>&1
  echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026112[7-9]* $L/ 2>/dev/null
  tail -8 $L/conv-$stamp.log
fi
if [ "$1" == tests ]; then gpu_suite ${TEST_S:-520}; fi
if [ "$1" == final ]; then
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_conv.py > $L/conv-tests-$stamp.log 2>&1
  echo "conv tests rc=$? $(el): $(tail -1 $L/conv-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/conv-tests-$stamp.log | head -8
  CONV_VARIANTS= timeout 150 python bench/conv.py --batch 64 > $L/conv-$stamp.log 2>&1
  echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026112[7-9]* $L/ 2>/dev/null
  grep -E "^64 .*(wss|wst4:256 )" $L/conv-$stamp.log | head -12; tail -7 $L/conv-$stamp.log
  timeout 60 python bench/gmma_n_probe.py > $L/gmma_n_probe-$stamp.log 2>&1
  echo "probe rc=$? $(el)"; tail -31 $L/gmma_n_probe-$stamp.log
  for tool in memcheck racecheck; do
    timeout 130 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
fi
if [ "$1" == san ]; then  # compute-sanitizer $CONV_SAN on bench/sanitize_conv.py only
  for tool in ${CONV_SAN-memcheck racecheck}; do
    timeout 200 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
fi
cd $OUT && tar czf s18-$1-$stamp.tgz r && rm -rf r
