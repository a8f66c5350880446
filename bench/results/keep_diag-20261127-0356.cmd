PYTHONPATH=. python bench/keep_diag.py --rw --shapes 131072x256 --dtypes bfloat16,float32 --settings default
