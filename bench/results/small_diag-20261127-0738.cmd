PYTHONPATH=. python bench/small_diag.py --dtype float16 --ops fprop,bprop --variants tc_ring_kp_part,tc_ring_kp_late,tc_ring_kp
