#!/bin/bash
# The closing device calls of session 2026-11-26 (eleventh). Usage on the GPU machine:
#   bash bench/device_s11.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s11.sh bench   bench/bsmm.py and its ratio table (bench/bsmm_table.py)
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
touch $L/.start
if [ "$1" == tests ]; then gpu_suite 480; fi
if [ "$1" == bench ]; then
  timeout 300 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
  find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
  j=$(ls -t $L/bsmm-*.json | head -1); python bench/bsmm_table.py $j > $L/bsmm-table-$stamp.md 2>&1
  cat $L/bsmm-table-$stamp.md | head -60
fi
tar czf $OUT/s11-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
