#!/bin/bash
# The closing device call of session 2026-11-26 (fourth): every GPU test, `python -m cusparseblocks check`,
# bench/bsmm.py (full table) and compute-sanitizer memcheck + racecheck on bench/sanitize_bsmm.py (every
# xw_gmma_rs tile forced, the b = 16 / 8 update). Usage on the GPU machine: bash bench/device_s4.sh
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
stamp=$(date -u +%Y%m%d-%H%M)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python bench/ew.py --warm-only 2>&1 | tail -1
timeout ${TEST_S:-300} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/ > $L/all-tests-$stamp.log 2>&1
echo "all tests rc=$? $(el): $(tail -1 $L/all-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/all-tests-$stamp.log | head -8
grep -E "^SKIPPED" $L/all-tests-$stamp.log | head -6
timeout 60 python -m cusparseblocks check > $L/check-$stamp.log 2>&1
echo "check rc=$? ($(el)): $(tail -2 $L/check-$stamp.log | tr '\n' ' ')"
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
