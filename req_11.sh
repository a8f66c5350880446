. bench/device_env.sh
timeout 200 python -m pytest -m gpu -q -n 10 -p no:cacheprovider -rfE tests/test_matmul_gpu.py tests/test_matmul_fuzz.py -k "updat or update or fuzz or ffma" > $L/tests-$stamp.log 2>&1
echo "tests rc=$? $(el): $(tail -1 $L/tests-$stamp.log)"; grep -E '^(FAILED|ERROR)' $L/tests-$stamp.log | head -8
timeout 240 python bench/bsmm.py > $L/bsmm-$stamp.log 2>&1; echo "bsmm rc=$? ($(el))"
cp $(ls -t bench/results/bsmm-2026*.json bench/results/bsmm-2026*.cmd bench/results/bsmm-2026*.png 2>/dev/null | head -3) $L/
tar czf $OUT/r11-$stamp.tgz -C $L .
python bench/bsmm_table.py $(ls -t bench/results/bsmm-2026*.json | head -1) | grep -E 'updat|float16 \| 64|float16 \| 32|float32' | head -70
echo "done $(el)"
