PYTHONPATH=. python bench/groups_diag.py 
