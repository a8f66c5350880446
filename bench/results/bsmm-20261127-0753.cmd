PYTHONPATH=. python bench/bsmm.py
