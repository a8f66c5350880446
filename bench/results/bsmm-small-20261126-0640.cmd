PYTHONPATH=. python bench/bsmm.py --small
