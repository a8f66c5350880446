PYTHONPATH=. python bench/ew.py --dtypes bfloat16 --only norm
