PYTHONPATH=. python bench/small_diag.py --dtype float16,bfloat16 --ops fprop,bprop --variants tc_ring_kp_part
