PYTHONPATH=. python bench/ew.py --variants --reps 20
