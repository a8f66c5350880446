PYTHONPATH=. python bench/bsmm_gmma.py --blocks 64,32 --ops fprop,bprop --densities 0.5,0.2,0.1,0.05 --only gmma,rs_c4_e2,tma_g2_m2,tma_m2_s2,tma_p,tma_m2,tma_rs4_m2
