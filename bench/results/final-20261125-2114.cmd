bash bench/device_final.sh   # H100 80GB HBM3: pytest -m gpu -n 12 tests/ (every module), python -m cusparseblocks check, bench/ew.py --reps 20, bench/rnn.py
