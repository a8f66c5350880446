PYTHONPATH=. python bench/small_diag.py --dtype float32 --ops fprop,bprop --variants simt_ring8_part
