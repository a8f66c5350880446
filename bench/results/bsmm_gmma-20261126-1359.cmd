PYTHONPATH=. python bench/bsmm_gmma.py --densities 0.5,0.35 --blocks 64 --ops fprop --only tma_g2_m2,tma_g2_m2_p,tma_rs2,tma_g3_s3
