PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.35 --blocks 64 --ops updat
