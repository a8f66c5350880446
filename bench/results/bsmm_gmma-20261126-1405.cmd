PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.5,0.35,0.2,0.1 --blocks 64 --ops fprop,bprop --only tma_g2_m2,tma_g2_m2_p,tma_t2_m2,tma_t2_m2_p,tma_m2_s2
