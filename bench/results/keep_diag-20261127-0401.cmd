PYTHONPATH=. python bench/keep_diag.py --prof --shapes 131072x256,262144x128 --dtypes bfloat16,float32 --settings keep always,keep no pref
