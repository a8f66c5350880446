PYTHONPATH=. python bench/bsmm_gmma.py --no-update --densities 0.5,0.2,0.05 --blocks 16,32
