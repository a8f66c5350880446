PYTHONPATH=. python bench/bsmm_gmma.py --dtypes float16,bfloat16 --densities 0.5,0.2,0.05 --blocks 64 --ops fprop,bprop --only tma_t2_m2,tma_t2_m2_p,tma_g2_m2,tma_m2_s2,tma_p
