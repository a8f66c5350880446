PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.5,0.2,0.05 --blocks 64,32 --ops fprop,bprop --only tma_t2_m2,tma_g2_m2
