#!/bin/bash
# The device calls of session 2026-11-27 (seventeenth). Usage on the GPU machine:
#   bash bench/device_s17.sh conv    the conv GPU tests (the wgmma halo kernel the default on sm_90), the
#                                    small-batch matmul tests (the head's proof), compute-sanitizer on
#                                    bench/sanitize_conv.py, bench/conv.py at batch 64 (env CONV_NOTEST skips the
#                                    tests, SMALL_NOTEST the matmul ones, CONV_SAN the sanitizer tools, CONV_ARGS more bench arguments)
#   bash bench/device_s17.sh ncu     Nsight Compute (--set full) on the random d = 0.5 fprop of bench/conv.py's shape,
#                                    variants $NCU_V (default halo:256x4 gmma:256x4), the metrics table
#   bash bench/device_s17.sh src     ncu SourceCounters of one launch per $SRC_V variant: per-SASS-instruction counts (CSV)
#   bash bench/device_s17.sh tests   every GPU test and `python -m cusparseblocks check`
# Everything lands in one archive under $OUT.
. bench/device_env.sh
if [ "$1" == conv ]; then
  if [ -z "$CONV_NOTEST" ]; then
    timeout 240 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_conv.py \
      > $L/conv-tests-$stamp.log 2>&1
    echo "conv tests rc=$? $(el): $(tail -1 $L/conv-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/conv-tests-$stamp.log | head -8
    if [ -z "$SMALL_NOTEST" ]; then
      timeout 150 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "small_batch" \
        > $L/small-tests-$stamp.log 2>&1
      echo "small tests rc=$? $(el): $(tail -1 $L/small-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/small-tests-$stamp.log | head -4
    fi
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
if [ "$1" == ncu ]; then  # Nsight Compute on the random d = 0.5 fprop: $NCU_V variants (2 launches each)
  vs=${NCU_V:-halo:256x4 gmma:256x4}; n=$(( 2 * $(echo $vs | wc -w) ))
  timeout 240 ncu --kernel-name regex:conv_fprop_ --launch-count $n --set full -f -o $L/ncu-conv \
    python bench/profile_conv.py d=${NCU_D:-0.5} $vs > $L/ncu-conv-$stamp.log 2>&1; echo "ncu rc=$? $(el)"
  ncu --import $L/ncu-conv.ncu-rep --page raw --csv > $L/ncu-conv-raw-$stamp.csv 2>&1
  ncu --import $L/ncu-conv.ncu-rep --page details > $L/ncu-conv-details-$stamp.txt 2>&1; rm -f $L/ncu-conv.ncu-rep
  python bench/profile_conv.py --table $L/ncu-conv-raw-$stamp.csv
fi
if [ "$1" == src ]; then  # per-instruction counts (SourceCounters) of one launch of $SRC_V at d = ${NCU_D:-0.5}
  for v in ${SRC_V:-gmma:128x4}; do
    n=$(echo $v | tr ':' '_')
    timeout 200 ncu --kernel-name regex:conv_fprop_ --launch-skip 1 --launch-count 1 --section SourceCounters \
      --section WarpStateStats --import-source no -f -o $L/src-$n python bench/profile_conv.py d=${NCU_D:-0.5} $v \
      > $L/src-$n-$stamp.log 2>&1; echo "ncu src $v rc=$? $(el)"
    ncu -i $L/src-$n.ncu-rep --page source --csv --print-source sass > $L/src-$n-sass-$stamp.csv 2>&1
    ncu -i $L/src-$n.ncu-rep --page source --csv --print-source cuda,sass > $L/src-$n-cudasass-$stamp.csv 2>&1
    rm -f $L/src-$n.ncu-rep; wc -l $L/src-$n-*-$stamp.csv
  done
fi
if [ "$1" == tests ]; then gpu_suite ${TEST_S:-520}; fi
cd $OUT && tar czf s17-$1-$stamp.tgz r && rm -rf r
