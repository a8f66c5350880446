#!/bin/bash
# The closing device call of session 2026-11-26 (eleventh), on the GPU machine: every GPU test and
# `python -m cusparseblocks check`, then bench/bsmm.py and its ratio table (bench/bsmm_table.py).
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
touch $L/.start
gpu_suite 400
timeout 240 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
j=$(ls -t $L/bsmm-*.json | head -1); python bench/bsmm_table.py $j > $L/bsmm-table-$stamp.md 2>&1
tar czf $OUT/s11-final-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
