PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32,64 --ops fprop --densities 0.5,0.35,0.2,0.1,0.05 --only tma_t2_m2,tma_g2_m2,tma_t4_m2,tma_t4_m2_s4,tma_t4_m2_s8,tma_t4_m2_p

# run twice in one device call: in an untracked copy of 0f8cb6f (-old.log) and on the working tree (-new.log); bench/cmp_rows.py OLD NEW compares them
