#!/bin/bash
# The closing device calls of session 2026-11-26 (three calls, the machine kept warm between them).
#   bash bench/device_final2.sh tests   every GPU test + the main job's check
#   bash bench/device_final2.sh sanit   compute-sanitizer memcheck/racecheck on bsmm and the helper ops + bench/ew.py
#   bash bench/device_final2.sh bsmm    bench/bsmm.py (full table) + the small-batch table
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
stamp=$(date -u +%Y%m%d-%H%M); t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
case $1 in
tests)
  python bench/ew.py --warm-only 2>&1 | tail -1
  timeout ${TEST_S:-420} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/ > $L/final-$stamp-gpu-tests-all.log 2>&1
  echo "all GPU tests rc=$? ($(el)): $(tail -1 $L/final-$stamp-gpu-tests-all.log)"
  grep -E "^(FAILED|ERROR)" $L/final-$stamp-gpu-tests-all.log | head -20
  grep -E "^SKIPPED" $L/final-$stamp-gpu-tests-all.log | head -10
  timeout 90 python -m cusparseblocks check > $L/final-$stamp-check.log 2>&1
  echo "check rc=$? ($(el)): $(tail -2 $L/final-$stamp-check.log | tr '\n' ' ')";;
sanit)
  for tool in memcheck racecheck; do
    for s in sanitize_bsmm sanitize_ops; do
      timeout 150 compute-sanitizer --tool $tool python bench/$s.py > $L/$s-$tool-$stamp.log 2>&1
      echo "$s $tool rc=$? ($(el)): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|every result' $L/$s-$tool-$stamp.log | tr '\n' ' ')"
    done
  done
  timeout 150 python bench/ew.py --reps 20 > $L/ew-$stamp.log 2>&1
  echo "ew rc=$? ($(el))"
  cp $(ls -t bench/results/ew-*.json bench/results/ew-*.cmd | head -2) $L/;;
bsmm)
  timeout 330 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1
  echo "bsmm rc=$? ($(el))"
  timeout 150 python bench/bsmm.py --small > $L/bsmm-small-$stamp.log 2>&1
  echo "bsmm small rc=$? ($(el))"
  cp $(ls -t bench/results/bsmm-*.json bench/results/bsmm-*.cmd bench/results/bsmm-*.png 2>/dev/null | head -6) $L/;;
esac
tar czf $OUT/final2-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
