PYTHONPATH=. python bench/conv.py --batch 64
