PYTHONPATH=. python bench/bsmm_tf32.py --short
