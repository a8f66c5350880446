PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32 --ops fprop,bprop --densities 0.5,0.35,0.2 --only gmma,rs_c4_e2,tma_g2_m2,tma_m2
