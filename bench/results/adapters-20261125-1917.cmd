PYTHONPATH=. python bench/adapters.py
