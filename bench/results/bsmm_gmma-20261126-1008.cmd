PYTHONPATH=. python bench/bsmm_gmma.py --blocks 64,32,16 --ops fprop --densities 0.5,0.2,0.05 --only gmma,rs_c4_e2,rs_c8_e2,tma,tma_c2,tma_c2_m2,tma_c4,tma_c4_m2,tma_c8,tma_c8_m2,tma_m2
