PYTHONPATH=. python bench/keep_diag.py --prof --shapes 524288x64,262144x128,131072x256 --dtypes bfloat16 --settings keep always,keep no hints
