# The common start of the bench/device_s*.sh closing scripts (sourced, on the GPU machine): environment with no
# install, the log folder $L under $OUT, el (seconds since the start), a UTC stamp, and the card's name and clock.
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
stamp=$(date -u +%Y%m%d-%H%M)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader

# every GPU test (time limit $TEST_S, else $1 seconds; $SUITE_ARGS more pytest arguments) and `python -m
# cusparseblocks check`, logs under $L
gpu_suite() {
  timeout ${TEST_S:-$1} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/ $SUITE_ARGS > $L/all-tests-$stamp.log 2>&1
  echo "all tests rc=$? $(el): $(tail -1 $L/all-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/all-tests-$stamp.log | head -8
  grep -E "^SKIPPED" $L/all-tests-$stamp.log | head -6
  timeout 60 python -m cusparseblocks check > $L/check-$stamp.log 2>&1
  echo "check rc=$? ($(el)): $(tail -2 $L/check-$stamp.log | tr '\n' ' ')"
}

# compute-sanitizer memcheck and racecheck on bench/sanitize_ops.py (each at most $1 seconds), logs under $L
sanitize_ops() {
  for tool in memcheck racecheck; do
    timeout $1 compute-sanitizer --tool $tool python bench/sanitize_ops.py > $L/sanitize_ops-$tool-$stamp.log 2>&1
    echo "sanitize_ops $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $L/sanitize_ops-$tool-$stamp.log | tail -1)"
  done
}
