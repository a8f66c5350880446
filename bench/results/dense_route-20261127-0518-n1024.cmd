PYTHONPATH=. python bench/dense_route.py --dtypes float16 --blocks 8,16 --n 1024 --densities 0.05,0.1,0.2
