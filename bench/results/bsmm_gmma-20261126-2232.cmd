PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32 --ops fprop,bprop --densities 0.5,0.35,0.2,0.1,0.05 --dtypes float16,bfloat16 --only tma_g2_m2,tma_t4_m2,tma_t4_m2_s4,tma_t4_m2_s8,tma_t4_m2_p
