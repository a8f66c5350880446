PYTHONPATH=. python bench/ew.py --only norm --dtypes bfloat16,float16,float32 --variants
