PYTHONPATH=. python bench/bsmm.py --no-torch --dtype float32 --n 4096 --b 32
