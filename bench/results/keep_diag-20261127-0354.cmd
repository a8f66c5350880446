PYTHONPATH=. python bench/keep_diag.py --prof --rw --shapes 131072x256 --dtypes bfloat16,float32 --settings keep always,keep 16K,keep 52K
