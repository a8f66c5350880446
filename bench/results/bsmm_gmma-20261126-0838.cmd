PYTHONPATH=. python bench/bsmm_gmma.py --blocks 16 --ops updat --densities 0.5,0.2,0.05 --dtypes float16  # H100, integ@67fb574 (final run)
