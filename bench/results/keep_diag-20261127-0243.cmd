PYTHONPATH=. python bench/keep_diag.py --settings default,keep never
