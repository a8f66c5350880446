PYTHONPATH=. python bench/bsmm_gmma.py --blocks 32 --ops fprop,bprop --densities 0.5,0.2,0.05 --only tma_t4_m2,tma_t4_m2_s8

# run twice in one device call: in an untracked copy of main 6682ed3 (-old.log) and on branch wip-tt-deep (-new.log: two wgmma groups in flight in the transposed tile); bench/cmp_rows.py OLD NEW compares them
