#!/bin/bash
# The closing device call of session 2026-11-26 (fourth): every GPU test, `python -m cusparseblocks check`,
# bench/bsmm.py (full table) and compute-sanitizer memcheck + racecheck on bench/sanitize_bsmm.py (every
# xw_gmma_rs tile forced, the b = 16 / 8 update). Usage on the GPU machine: bash bench/device_s4.sh
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
gpu_suite 300
timeout 200 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? ($(el))"
for tool in memcheck racecheck; do
  timeout 100 compute-sanitizer --tool $tool python bench/sanitize_bsmm.py > $L/sanitize_bsmm-$tool-$stamp.log 2>&1
  echo "sanitize_bsmm $tool rc=$? ($(el)): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_bsmm-$tool-$stamp.log | tr '\n' ' ')"
done
cp $(ls -t bench/results/bsmm-2026*.json bench/results/bsmm-2026*.cmd bench/results/bsmm-2026*.png 2>/dev/null | head -3) $L/ 2>/dev/null
f=$(ls -t bench/results/bsmm-2026*.json | head -1); python bench/bsmm_table.py $f > $L/bsmm-table-$stamp.txt 2>&1
grep -E "float16|bfloat16" $L/bsmm-table-$stamp.txt | grep -E "\| (8|16|32) \|" | head -40
tar czf $OUT/s4-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el): s4-$stamp.tgz"
