PYTHONPATH=. python bench/cols_probe.py
