PYTHONPATH=. python bench/bsmm_gmma.py --blocks 16,32 --no-update --densities 0.5,0.2,0.05  # H100, main@14abc68
