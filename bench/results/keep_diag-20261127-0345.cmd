PYTHONPATH=. python bench/keep_diag.py --rw --shapes 131072x256,8192x4096 --settings default
