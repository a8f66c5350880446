PYTHONPATH=. python bench/keep_diag.py 
