#!/bin/bash
# One device call for the conv helper (session 2026-11-26, third): conv GPU tests, bench/conv.py at batch 64
# (every fprop variant, the previous schedule ":v1" among them), and Nsight Compute on the block-diagonal
# fprop (previous and automatic schedule; without and with the shuffle). Logs in $OUT/conv/, table last.
# Usage on the GPU machine: bash bench/device_conv.sh [tests] [bench] [ncu]   (default: all three)
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; L=$OUT/conv; mkdir -p $L
t0=$(date +%s); el() { echo "$(($(date +%s)-t0)) s"; }
parts=${*:-tests bench ncu}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
for part in $parts; do
  case $part in
  tests)
    timeout 200 python -m pytest -m gpu -q -n 8 -p no:cacheprovider -rfE tests/test_conv.py > $L/gpu-tests.log 2>&1
    echo "conv tests rc=$? $(el): $(tail -1 $L/gpu-tests.log)"; grep -E '^(FAILED|ERROR)' $L/gpu-tests.log | head -8;;
  bench)
    timeout 240 python bench/conv.py --batch 64 > $L/bench.log 2>&1
    echo "conv bench rc=$? $(el)"; cp bench/results/conv-2026* $L/ 2>/dev/null;;
  ncu)
    for s in plain shuffle; do
      a=$([ $s = shuffle ] && echo shuffle)
      timeout 150 ncu --kernel-name regex:conv_fprop_halo --launch-skip 1 --launch-count 3 --set full -f \
        -o $L/ncu-$s python bench/profile_conv.py $a halo:256x4:v1 auto > $L/ncu-$s.log 2>&1
      echo "ncu $s rc=$? $(el)"
      ncu --import $L/ncu-$s.ncu-rep --page details > $L/ncu-$s-details.log 2>&1
      ncu --import $L/ncu-$s.ncu-rep --page raw --csv > $L/ncu-$s-raw.csv 2>&1
      python bench/profile_conv.py --table $L/ncu-$s-raw.csv
    done;;
  esac
done
[ -f $L/bench.log ] && sed -n '/ N .*variant/,$p' $L/bench.log | tail -60
