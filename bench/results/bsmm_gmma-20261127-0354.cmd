PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32 --ops fprop,bprop --densities 0.5,0.35,0.2,0.1,0.05 --only tma_t4_m2_s8_np2,tma_t4_m2_s8_np2_dp
