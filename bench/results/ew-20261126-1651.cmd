PYTHONPATH=. python bench/ew.py --dtypes bfloat16,float16,float32 --only batch_norm,layer_norm
