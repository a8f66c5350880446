#!/bin/bash
# The closing device calls of session 2026-11-26 (fifth). Usage on the GPU machine:
#   bash bench/device_s5.sh tests   every GPU test, `python -m cusparseblocks check`, compute-sanitizer memcheck +
#                                   racecheck on bench/sanitize_bsmm.py (every xw_gmma_rs and xw_tma tile forced)
#   bash bench/device_s5.sh bench   bench/bsmm.py (full table) and bench/bsmm_gmma.py for b = 64 / 32 (the TMA tiles
#                                   against xw_gmma / xw_gmma_rs, fprop and bprop)
. bench/device_env.sh
if [ "$1" = tests ]; then
  python bench/ew.py --warm-only 2>&1 | tail -1
  gpu_suite 330
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --tool $tool python bench/sanitize_bsmm.py > $L/sanitize_bsmm-$tool-$stamp.log 2>&1
    echo "sanitize_bsmm $tool rc=$? ($(el)): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_bsmm-$tool-$stamp.log | tr '\n' ' ')"
  done
  tar czf $OUT/s5-tests-$stamp.tgz -C $L . && rm -rf $L
else
  timeout 230 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? ($(el))"
  timeout 300 python bench/bsmm_gmma.py --blocks 64,32 --ops fprop,bprop --densities 0.5,0.2,0.1,0.05 \
    --only gmma,rs_c4_e2,tma_g2_m2_p,tma_g2_m2,tma_m2_s2,tma_p,tma_m2,tma_rs4_m2 > $L/bsmm_gmma-$stamp.log 2>&1
  echo "bsmm_gmma rc=$? ($(el))"
  cp $(ls -t bench/results/bsmm-2026*.json bench/results/bsmm-2026*.cmd bench/results/bsmm-2026*.png 2>/dev/null | head -3) $L/
  cp $(ls -t bench/results/bsmm_gmma-2026*.json bench/results/bsmm_gmma-2026*.cmd 2>/dev/null | head -2) $L/
  f=$(ls -t bench/results/bsmm-2026*.json | head -1); python bench/bsmm_table.py $f > $L/bsmm-table-$stamp.txt 2>&1
  grep -E "float16|bfloat16" $L/bsmm-table-$stamp.txt | grep -E "\| (16|32|64) \|" | head -40
  tar czf $OUT/s5-bench-$stamp.tgz -C $L . && rm -rf $L
fi
echo "done $(el)"
