#!/bin/bash
# The device calls of session 2026-11-27 (sixteenth). Usage on the GPU machine:
#   bash bench/device_s16.sh kp      the small-batch GPU tests (the k-permuted ring tc_ring_kp included),
#                                    compute-sanitizer on it (sanitize_bsmm.py --small), bench/small_diag.py
#                                    fprop and bprop, fp16 and bf16: default, tc_ring_kp, per-column
#                                    (env: KP_V variants, KP_DT dtypes, KP_ARGS more small_diag arguments, KP_NOTEST
#                                    skips the tests, KP_SAN the sanitizer tools)
#   bash bench/device_s16.sh ncu     tc_ring_kp with and without piece ends (small_diag), ncu source counters of both
#   bash bench/device_s16.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s16.sh bench   bench/bsmm.py
# Everything lands in one archive under $OUT.
. bench/device_env.sh
if [ "$1" == kp ]; then
  [ -n "$KP_NOTEST" ] || timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "small_batch" \
    > $L/small-tests-$stamp.log 2>&1
  echo "small tests rc=$? $(el): $(tail -1 $L/small-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/small-tests-$stamp.log | head -8
  for tool in ${KP_SAN-memcheck racecheck}; do
    timeout 120 compute-sanitizer --report-api-errors no --tool $tool python bench/sanitize_bsmm.py --small ${KP_V:-tc_ring_kp} \
      > $L/sanitize_small-$tool-$stamp.log 2>&1
    echo "sanitize small $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_small-$tool-$stamp.log | tr '\n' ' ')"
  done
  timeout 240 python bench/small_diag.py --dtype ${KP_DT:-float16,bfloat16} --ops fprop,bprop --variants ${KP_V:-tc_ring_kp} $KP_ARGS \
    > $L/small_diag-$stamp.log 2>&1
  echo "small_diag rc=$? $(el)"; cp bench/results/small_diag-2026112[7-9]* $L/ 2>/dev/null
  tail -60 $L/small_diag-$stamp.log
fi
if [ "$1" == ncu ]; then  # the k-permuted ring with and without its piece ends: times, then ncu's stall samples
  timeout 150 python bench/small_diag.py --dtype float16 --ops fprop --variants tc_ring_kp,diag_tc_kp_noepi,diag_tc_noepi \
    > $L/small_diag-$stamp.log 2>&1; echo "small_diag rc=$? $(el)"; cp bench/results/small_diag-2026112[7-9]* $L/ 2>/dev/null
  tail -12 $L/small_diag-$stamp.log
  for v in tc_ring_kp diag_tc_kp_noepi; do
    timeout 120 ncu --kernel-name regex:xw_small --launch-skip 2 --launch-count 1 --section SourceCounters \
      --section WarpStateStats --section SpeedOfLight --section MemoryWorkloadAnalysis --import-source no -o $L/$v \
      python bench/profile_small.py 0.5 float16 --variant=$v > $L/ncu-$v-$stamp.log 2>&1; echo "ncu $v rc=$? $(el)"
    ncu -i $L/$v.ncu-rep --page source --csv --print-source sass > $L/$v-sass-$stamp.csv 2>&1
    ncu -i $L/$v.ncu-rep --page details > $L/$v-details-$stamp.txt 2>&1; rm -f $L/$v.ncu-rep
    grep -E "Duration|DRAM Throughput|L2 Cache Throughput|Issue Slots|Warp Cycles Per Issued|No Eligible|L1/TEX Hit|L2 Hit" \
      $L/$v-details-$stamp.txt | head -12
  done
fi
if [ "$1" == tests ]; then gpu_suite ${TEST_S:-520}; fi
if [ "$1" == bench ]; then
  timeout 400 python bench/bsmm.py ${BSMM_ARGS:-} > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
  cp bench/results/bsmm-2026* $L/ 2>/dev/null
  grep -E "^ *cusparseblocks(\[kernels\])? +(fprop|bprop|updat)" $L/bsmm-$stamp.log | head -150
fi
cd $OUT && tar czf s16-$1-$stamp.tgz r && rm -rf r
