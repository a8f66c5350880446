PYTHONPATH=. python bench/bsmm_gmma.py --seq --densities 0.5,0.2,0.1,0.05 --blocks 64,32,16 --ops fprop,bprop --only tma_g2_m2_p,tma_g2_m2,tma_m2_s2,tma_p,tma_m2,rs_c4_e2,rs_c8_e2
