PYTHONPATH=. python bench/keep_diag.py --shapes 131072x256,262144x128 --settings default,keep no pref
