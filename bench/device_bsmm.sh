#!/bin/bash
# One device call for the bsmm kernels: GPU tests, the benchmark, compute-sanitizer memcheck and racecheck.
# Usage (on the GPU machine, repository root): bash bench/device_bsmm.sh  (logs under $OUT, table last)
export PYTHONPATH=. CUSPARSEBLOCKS_CACHE_DIR=/tmp/cbc XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/logs"; L=$OUT/logs
stamp=$(date -u +%Y%m%d-%H%M)
t0=$(date +%s)
timeout ${TEST_S:-240} python -m pytest -m gpu -q -n 8 -x tests/test_matmul_gpu.py tests/test_matmul.py > $L/bsmm-$stamp-gpu-tests.log 2>&1
echo "gpu tests rc=$? ($(($(date +%s)-t0)) s): $(tail -1 $L/bsmm-$stamp-gpu-tests.log)"
timeout ${BENCH_S:-240} python bench/bsmm.py --out $L > $L/bsmm-$stamp-bench.log 2>&1
echo "bench rc=$? ($(($(date +%s)-t0)) s)"
timeout ${SAN_S:-60} compute-sanitizer --tool memcheck python bench/sanitize_bsmm.py > $L/bsmm-$stamp-memcheck.log 2>&1
echo "memcheck rc=$? ($(($(date +%s)-t0)) s): $(grep -E 'ERROR SUMMARY|worst' $L/bsmm-$stamp-memcheck.log | tr '\n' ' ')"
timeout ${SAN_S:-60} compute-sanitizer --tool racecheck python bench/sanitize_bsmm.py > $L/bsmm-$stamp-racecheck.log 2>&1
echo "racecheck rc=$? ($(($(date +%s)-t0)) s): $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|worst' $L/bsmm-$stamp-racecheck.log | tr '\n' ' ')"
tar czf $OUT/bsmm-logs.tgz -C $L .
grep -E "FAILED|Error" $L/bsmm-$stamp-gpu-tests.log | head -20
python - $L <<'PY'
import glob, json, sys
from collections import defaultdict
f = sorted(glob.glob(sys.argv[1] + "/bsmm-*.json"))[-1]
t = defaultdict(dict)
for r in json.load(open(f))["rows"]:
    if r["N"] == 4096:
        t[(r["op"], r["dtype"], r["b"], r["density"])][r["system"].replace("cusparseblocks", "cb")] = r["ms"]
for k, v in sorted(t.items()):
    d = v.get("dense cuBLAS")
    print(*k, " ".join(f"{s}={x:.4f}" for s, x in v.items() if "torch" not in s), f"x_dense={k[3] * d / v['cb']:.3f}" if d else "")
PY
