#!/bin/bash
# One device call that checks and times what is merged on integ (session 2026-11-26, third), and the
# closing runs. Usage on the GPU machine: bash bench/device_s3.sh PART...
#   act    the activation forwards' GPU tests and their U-vector variants (bench/ew.py --variants)
#   tests  every GPU test + `python -m cusparseblocks check`
#   sanit  compute-sanitizer memcheck/racecheck on bench/sanitize_bsmm.py and bench/sanitize_ops.py
#   bsmm   bench/bsmm.py (full table) and the small-batch table;  ew, conv, rnn: their benchmarks
. bench/device_env.sh
tests() {  # name, timeout, pytest args...
  local name=$1 t=$2; shift 2
  timeout $t python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE "$@" > $L/$name-tests.log 2>&1
  echo "$name tests rc=$? $(el): $(tail -1 $L/$name-tests.log)"; grep -E '^(FAILED|ERROR)' $L/$name-tests.log | head -8
}
for part in "$@"; do
  case $part in
  act)
    tests act 150 tests/test_ops.py -k activation
    timeout 150 python bench/ew.py --reps 20 --variants --only "relu fwd,gelu_tanh fwd,gelu_erf fwd,sigmoid fwd,tanh fwd,softplus fwd,swish fwd,elu fwd,scale,copy" > $L/act-ew-$stamp.log 2>&1
    echo "act ew rc=$? $(el)";;
  conv)
    tests conv 240 tests/test_conv.py
    timeout 200 python bench/conv.py > $L/conv-$stamp.log 2>&1
    echo "conv bench rc=$? $(el)";;
  tests)
    python bench/ew.py --warm-only 2>&1 | tail -1
    tests all ${TEST_S:-420} tests/
    grep -E "^SKIPPED" $L/all-tests.log | head -10
    timeout 90 python -m cusparseblocks check > $L/check.log 2>&1
    echo "check rc=$? ($(el)): $(tail -2 $L/check.log | tr '\n' ' ')";;
  sanit)
    for tool in memcheck racecheck; do
      for s in sanitize_bsmm sanitize_ops; do
        timeout 150 compute-sanitizer --tool $tool python bench/$s.py > $L/$s-$tool-$stamp.log 2>&1
        echo "$s $tool rc=$? ($(el)): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|every result' $L/$s-$tool-$stamp.log | tr '\n' ' ')"
      done
    done;;
  bsmm)
    timeout 330 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? ($(el))"
    timeout 150 python bench/bsmm.py --small > $L/bsmm-small-$stamp.log 2>&1; echo "bsmm small rc=$? ($(el))";;
  ew)
    timeout 150 python bench/ew.py --reps 20 > $L/ew-$stamp.log 2>&1; echo "ew rc=$? ($(el))";;
  rnn)
    timeout 200 python bench/rnn.py > $L/rnn-$stamp.log 2>&1; echo "rnn rc=$? ($(el))";;
  esac
done
cp $(ls -t bench/results/*.json bench/results/*.cmd bench/results/*.png 2>/dev/null | head -12) $L/ 2>/dev/null
tar czf $OUT/s3-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el): s3-$stamp.tgz"
