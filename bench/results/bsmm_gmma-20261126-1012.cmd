PYTHONPATH=. python bench/bsmm_gmma.py --blocks 64,32 --ops fprop,bprop --densities 0.5,0.2,0.1,0.05 --only gmma,rs_c4_e2,tma,tma_m2,tma_m2_s2,tma_s3,tma_m2_p,tma_p,tma_s4,tma_s4_p
