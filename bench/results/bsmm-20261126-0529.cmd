PYTHONPATH=. python bench/bsmm.py --no-torch --op updat --dtype float32 --n 4096
