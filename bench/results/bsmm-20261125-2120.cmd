PYTHONPATH=. python bench/bsmm.py --out DIR   # H100 80GB HBM3, after the update pointer-table cache
