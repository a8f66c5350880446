#!/bin/bash
# The closing device calls of session 2026-11-26 (ninth). Usage on the GPU machine:
#   bash bench/device_s9.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s9.sh bench   bench/ew.py (every op, 3 dtypes), bench/ln0_diag.py, and compute-sanitizer
#                                   memcheck + racecheck on bench/sanitize_ops.py (the column kernels)
#   bash bench/device_s9.sh all     both (~8 minutes)
. bench/device_env.sh
python bench/ew.py --warm-only 2>&1 | tail -1
touch $L/.start
if [ "$1" != bench ]; then gpu_suite 420; fi
if [ "$1" != tests ]; then
  python bench/ew.py > $L/ew-$stamp.log 2>&1; echo "ew rc=$? $(el)"
  python bench/ln0_diag.py > $L/ln0_diag-$stamp.log 2>&1; echo "ln0_diag rc=$? $(el)"
  sanitize_ops 150
  find bench/results -newer $L/.start -type f -exec cp {} $OUT/ \;
  tail -3 $L/ln0_diag-$stamp.log | head -1
fi
tar czf $OUT/s9-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
