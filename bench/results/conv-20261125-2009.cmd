PYTHONPATH=. python bench/conv.py --quick
