PYTHONPATH=. python bench/ew.py 
