#!/bin/bash
# The closing device call: every GPU test, the main job's check, and the ew and rnn benchmarks (the bsmm
# and conv benchmarks ran in their own calls). Usage on the GPU machine: bash bench/device_final.sh
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/r; mkdir -p $L
stamp=$(date -u +%Y%m%d-%H%M); t0=$(date +%s)
timeout ${TEST_S:-270} python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/ > $L/gpu-tests-all-$stamp.log 2>&1
echo "all GPU tests rc=$? ($(($(date +%s)-t0)) s): $(tail -1 $L/gpu-tests-all-$stamp.log); excepthook lines: $(grep -c 'sys.excepthook' $L/gpu-tests-all-$stamp.log)"
grep -E "^(FAILED|ERROR)" $L/gpu-tests-all-$stamp.log | head -20
timeout ${CHECK_S:-60} python -m cusparseblocks check > $L/check-$stamp.log 2>&1
echo "check rc=$? ($(($(date +%s)-t0)) s): $(tail -2 $L/check-$stamp.log | tr '\n' ' ')"
timeout ${EW_S:-110} python bench/ew.py --reps 20 > $L/ew-$stamp.log 2>&1
echo "ew rc=$? ($(($(date +%s)-t0)) s)"
timeout ${RNN_S:-90} python bench/rnn.py > $L/rnn-$stamp.log 2>&1
echo "rnn rc=$? ($(($(date +%s)-t0)) s)"
cp $(ls -t bench/results/ew-*.json bench/results/ew-*.cmd bench/results/rnn-*.json bench/results/rnn-*.cmd 2>/dev/null | head -4) $L/ 2>/dev/null
tar czf $OUT/final-$stamp.tgz -C $L . && rm -rf $L
tar xzf $OUT/final-$stamp.tgz -O ./ew-$stamp.log | tail -80
tar xzf $OUT/final-$stamp.tgz -O ./rnn-$stamp.log | tail -25
