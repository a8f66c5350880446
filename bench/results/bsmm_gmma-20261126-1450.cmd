PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.5,0.35,0.2 --blocks 64 --ops updat
