PYTHONPATH=. python bench/bsmm.py --no-torch --op fprop,bprop --dtype float32 --n 4096 --b 64
