#!/bin/bash
# The device calls of session 2026-11-27 (seventeenth). Usage on the GPU machine:
#   bash bench/device_s17.sh conv    the conv GPU tests (the wgmma halo kernel the default on sm_90), the
#                                    small-batch matmul tests (the head's proof), compute-sanitizer on
#                                    bench/sanitize_conv.py, bench/conv.py at batch 64 (env CONV_NOTEST skips the
#                                    tests, CONV_SAN the sanitizer tools, CONV_ARGS more bench arguments)
#   bash bench/device_s17.sh tests   every GPU test and `python -m cusparseblocks check`
# Everything lands in one archive under $OUT.
. bench/device_env.sh
if [ "$1" == conv ]; then
  if [ -z "$CONV_NOTEST" ]; then
    timeout 240 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_conv.py \
      > $L/conv-tests-$stamp.log 2>&1
    echo "conv tests rc=$? $(el): $(tail -1 $L/conv-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/conv-tests-$stamp.log | head -8
    timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "small_batch" \
      > $L/small-tests-$stamp.log 2>&1
    echo "small tests rc=$? $(el): $(tail -1 $L/small-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/small-tests-$stamp.log | head -4
  fi
  for tool in ${CONV_SAN-memcheck racecheck}; do
    timeout 150 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_conv.py \
      > $L/sanitize_conv-$tool-$stamp.log 2>&1
    echo "sanitize conv $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_conv-$tool-$stamp.log | tr '\n' ' ')"
  done
  timeout 300 python bench/conv.py --batch 64 $CONV_ARGS > $L/conv-$stamp.log 2>&1
  echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026112[7-9]* $L/ 2>/dev/null
  tail -45 $L/conv-$stamp.log
fi
if [ "$1" == tests ]; then gpu_suite ${TEST_S:-520}; fi
cd $OUT && tar czf s17-$1-$stamp.tgz r && rm -rf r
