PYTHONPATH=. python bench/keep_diag.py --prof --shapes 131072x256 --dtypes bfloat16 --settings keep always,keep U=8,keep ld nc,keep ld cs,keep no hints
