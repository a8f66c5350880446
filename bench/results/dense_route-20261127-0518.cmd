PYTHONPATH=. python bench/dense_route.py --dtypes float16,float32
