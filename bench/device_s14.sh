#!/bin/bash
# The device calls of session 2026-11-27 (fourteenth). Usage on the GPU machine:
#   bash bench/device_s14.sh diag    the tall-array GPU tests, bench/keep_diag.py with the phase stamps (--prof) of
#                                    the keep kernels (run 0323 also timed a KP_MIX build, since removed), and ncu's
#                                    per-instruction stall samples of the b = 32 fprop tile (bench/profile_bsmm.py)
#   bash bench/device_s14.sh np      the xw_tma tiles with 2 / 4 producer warps (NP): their GPU tests,
#                                    bench/bsmm_gmma.py against the one-producer tiles (run 0331 had the np4 and
#                                    b = 64 np2 tiles, since removed); keep_diag --prof on 128-, 256-, 512-byte rows
#   (runs 0346 and 0349 timed two more keep variants, KP_LD and KP_IL, since removed: bench/NOTES.md)
#   (run 0353 timed the b = 32 transposed tile with two wgmma groups in flight, tma_t4_m2_s8_np2_dp, since removed)
#   bash bench/device_s14.sh smem    keep_diag --prof --rw with 104 (default), 52 and 16 KiB of kept rows a block
#   bash bench/device_s14.sh rw      keep_diag --rw: read-only passes with 2-16 blocks an SM against the keep kernels
#   bash bench/device_s14.sh gain    the keep tests; keep_diag --prof of the keep kernels with the layer norm's gain per
#                                    row, with and without the parameters' L2 prefetch (run 0357: before it existed)
#   bash bench/device_s14.sh tests   every GPU test and `python -m cusparseblocks check`
#   bash bench/device_s14.sh tall    bench/ew.py's column statistics on three tall shapes, keep_diag (default / no
#                                    prefetch)
#   bash bench/device_s14.sh bench   bench/bsmm.py and its table, compute-sanitizer on bench/sanitize_bsmm.py,
#                                    keep_diag --rw (read-only / write-only passes against the copy), ncu's stall
#                                    samples of the b = 32 default tile
# Everything lands in one archive under $OUT (the device tool brings back only a few files a call).
. bench/device_env.sh
if [ "$1" == tests ]; then python bench/ew.py --warm-only 2>&1 | tail -1; echo "warm $(el)"; fi
touch $L/.start
OPS="layer_norm fwd ax0,layer_norm bwd ax0,batch_norm fwd,batch_norm bwd,layer_norm fwd ax0 +gain,layer_norm bwd ax0 +gain"
cols_tests() {  # $1: pytest -k expression (empty: all)
  timeout 200 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_ops_cols.py ${1:+-k "$1"} \
    > $L/cols-tests-$stamp.log 2>&1
  echo "cols tests rc=$? $(el): $(tail -1 $L/cols-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/cols-tests-$stamp.log | head -8
}
if [ "$1" == diag ]; then
  cols_tests keep
  timeout 330 python bench/keep_diag.py --prof --shapes ${KD_SHAPES:-131072x256,65536x512,8192x4096} \
    --settings "keep always" > $L/keep_diag-$stamp.log 2>&1; echo "keep_diag rc=$? $(el)"
  grep -E "^\{|^   " $L/keep_diag-$stamp.log | cut -c1-400 | tail -60
  timeout 150 ncu --kernel-name regex:xw_tma --launch-skip 3 --launch-count 1 --section SourceCounters \
    --section WarpStateStats --section SpeedOfLight --import-source no -o $L/tma32 python bench/profile_bsmm.py \
    > $L/ncu-tma32-$stamp.log 2>&1; echo "ncu rc=$? $(el)"
  ncu -i $L/tma32.ncu-rep --page source --csv --print-source sass > $L/tma32-sass-$stamp.csv 2>&1
  ncu -i $L/tma32.ncu-rep --page details > $L/tma32-details-$stamp.txt 2>&1
  echo "ncu pages $(el): $(wc -l < $L/tma32-sass-$stamp.csv) lines"; rm -f $L/tma32.ncu-rep
fi
if [ "$1" == np ]; then
  timeout 240 python -m pytest -m gpu -q -n 12 -p no:cacheprovider -rfE tests/test_matmul_gpu.py -k "np2 or np4" \
    > $L/np-tests-$stamp.log 2>&1
  echo "np tests rc=$? $(el): $(tail -1 $L/np-tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/np-tests-$stamp.log | head -8
  T=tma_t4_m2_s8,tma_t4_m2_s8_np2,tma_t4_m2_s8_np4,tma_g2_m2,tma_g2_m2_np2,tma_t2_m2,tma_t2_m2_np2
  timeout 300 python bench/bsmm_gmma.py --blocks 32,64 --ops fprop,bprop --densities 0.5,0.35,0.2,0.1,0.05 \
    --only $T > $L/bsmm_gmma-$stamp.log 2>&1; echo "bsmm_gmma rc=$? $(el)"
  grep -E "^\{" $L/bsmm_gmma-$stamp.log | python3 -c "
import sys, ast
for l in sys.stdin:
    r = ast.literal_eval(l)
    print(r['op'], r['b'], r['density'], r['kernel'].ljust(18), round(r['TFLOPs']), round(r['x_dense'], 3), '%.1e' % r['rel err'])"
  timeout 120 python bench/keep_diag.py --prof --shapes 524288x64,262144x128,131072x256 --dtypes bfloat16 \
    --settings "keep always,keep no hints" > $L/keep_diag-$stamp.log 2>&1; echo "keep_diag rc=$? $(el)"
  grep -E "^\{|^   " $L/keep_diag-$stamp.log | cut -c1-330
fi
if [ "$1" == smem ]; then  # the keep kernels' read phase with fewer rows kept (more streamed, more blocks an SM)
  timeout 200 python bench/keep_diag.py --prof --rw --shapes 131072x256 --dtypes bfloat16,float32 \
    --settings "keep always,keep 16K,keep 52K" > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"; grep -E "^\{|^   " $L/keep_diag-$stamp.log | cut -c40-330
fi
if [ "$1" == rw ]; then  # read-only passes with 32-256 KiB in flight an SM against the keep forward
  timeout 100 python bench/keep_diag.py --rw --shapes 131072x256 --dtypes bfloat16,float32 --settings default \
    > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"; grep -E "^\{" $L/keep_diag-$stamp.log | cut -c1-200
fi
if [ "$1" == gain ]; then  # the layer norm forward with a gain per row next to batch norm, phase stamps
  cols_tests keep
  timeout 200 python bench/keep_diag.py --prof --shapes 131072x256,262144x128 --dtypes bfloat16,float32 \
    --settings "keep always,keep no pref" \
    > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"; grep -E "^\{|^   " $L/keep_diag-$stamp.log | cut -c40-330
fi
if [ "$1" == tests ]; then gpu_suite 500; fi
if [ "$1" == tall ]; then  # bench/ew.py's column statistics on the tall shapes, the keep kernels' diagnostics
  for shape in "131072 256" "262144 128" "65536 512"; do
    read -r rows cols <<< "$shape"
    timeout 120 python bench/ew.py --rows $rows --cols $cols --only "$OPS" > $L/ew-tall-$rows-$stamp.log 2>&1
    echo "ew $rows x $cols rc=$? $(el)"
  done
  timeout 100 python bench/keep_diag.py --shapes 131072x256,262144x128 --settings "default,keep no pref" \
    > $L/keep_diag-$stamp.log 2>&1; echo "keep_diag rc=$? $(el)"
fi
if [ "$1" == bench ]; then
  timeout 220 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? $(el)"
  f=$(ls -t bench/results/bsmm-2026*.json | head -1); python bench/bsmm_table.py $f > $L/bsmm-table-$stamp.md 2>&1
  grep -E "\| (32|64) \|" $L/bsmm-table-$stamp.md | grep -E "float16|bfloat16" | grep -v updat | head -32
  for tool in memcheck racecheck; do
    timeout 110 compute-sanitizer --tool $tool python bench/sanitize_bsmm.py > $L/sanitize_bsmm-$tool-$stamp.log 2>&1
    echo "sanitize_bsmm $tool rc=$? $(el): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|worst' $L/sanitize_bsmm-$tool-$stamp.log | tr '\n' ' ')"
  done
  timeout 60 python bench/keep_diag.py --rw --shapes 131072x256,8192x4096 --settings default > $L/keep_diag-$stamp.log 2>&1
  echo "keep_diag rc=$? $(el)"; grep -E "only|bn fwd" $L/keep_diag-$stamp.log | grep "^{" | cut -c1-200
  timeout 60 ncu --kernel-name regex:xw_tma --launch-skip 3 --launch-count 1 --section SourceCounters \
    --section WarpStateStats --section SpeedOfLight --import-source no -o $L/np2 python bench/profile_bsmm.py \
    > $L/ncu-np2-$stamp.log 2>&1; echo "ncu rc=$? $(el)"
  ncu -i $L/np2.ncu-rep --page source --csv --print-source sass > $L/np2-sass-$stamp.csv 2>&1
  ncu -i $L/np2.ncu-rep --page details > $L/np2-details-$stamp.txt 2>&1; rm -f $L/np2.ncu-rep
fi
find bench/results -newer $L/.start -type f -exec cp {} $L/ \;
tar czf $OUT/s14-$1-$stamp.tgz -C $L . && rm -rf $L
echo "done $(el)"
