PYTHONPATH=. python bench/small_diag.py --dtype float16 --ops fprop --variants tc_ring_kp,diag_tc_kp_noepi,diag_tc_noepi
