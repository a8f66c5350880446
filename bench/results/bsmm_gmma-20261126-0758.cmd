PYTHONPATH=. python bench/bsmm_gmma.py --blocks 16 --ops fprop --densities 0.5,0.2,0.05  # H100, integ = main@02482ff + wip-upd-1126d@7dc8b43
