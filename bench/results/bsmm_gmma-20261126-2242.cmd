PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32,64 --ops fprop,bprop --densities 0.5,0.2,0.05 --only tma_t2_m2,tma_g2_m2,tma_t4_m2_s8,tma_m2_s2

# run twice in one device call: in an untracked copy of 0f8cb6f (-old.log) and on the working tree before 00730b3 (-new.log: the batched records with the C > 1 tiles' wgmmas serialized, bench/NOTES.md); bench/cmp_rows.py OLD NEW compares them
