PYTHONPATH=. python bench/ew.py --reps 20
