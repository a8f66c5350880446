PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32 --densities 0.5,0.3,0.2,0.1
