PYTHONPATH=. python bench/ln0_diag.py 
