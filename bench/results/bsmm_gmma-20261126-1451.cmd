PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.1,0.05,0.15 --blocks 64 --ops updat
