#!/bin/bash
# The closing device calls of session 2026-11-26 (tenth). Usage on the GPU machine:
#   bash bench/device_s10.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s10.sh bench   bench/ew.py (every op, 3 dtypes; then the column ops on tall arrays of
#                                    16384 and 65536 rows), bench/ln0_diag.py, bench/tall_diag.py, and
#                                    compute-sanitizer memcheck + racecheck on bench/sanitize_ops.py
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
touch $L/.start
if [ "$1" == tests ]; then gpu_suite 480; fi
if [ "$1" == bench ]; then
  python bench/ew.py > $L/ew-$stamp.log 2>&1; echo "ew rc=$? $(el)"
  OPS="layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd"
  for shape in "16384 2048" "65536 512"; do
    read -r rows cols <<< "$shape"
    python bench/ew.py --rows $rows --cols $cols --only "$OPS" > $L/ew-tall-$rows-$stamp.log 2>&1
    echo "ew $rows x $cols rc=$? $(el)"
  done
  python bench/ln0_diag.py > $L/ln0_diag-$stamp.log 2>&1; echo "ln0_diag rc=$? $(el)"
  python bench/tall_diag.py > $L/tall_diag-$stamp.log 2>&1; echo "tall_diag rc=$? $(el)"
  sanitize_ops 200
  find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
fi
tar czf $OUT/s10-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
