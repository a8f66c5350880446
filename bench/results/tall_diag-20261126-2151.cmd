PYTHONPATH=. python bench/tall_diag.py
